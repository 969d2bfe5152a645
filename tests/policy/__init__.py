"""Tests of the policy wing (webhook/policy/)."""
