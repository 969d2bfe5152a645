"""Tests of the cluster wing (webhook/cluster/)."""
