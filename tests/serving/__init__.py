"""Tests of the serving wing (webhook/serving/)."""
