"""Tests of the rules wing (webhook/rules/)."""
