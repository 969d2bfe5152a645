"""Tests of the settings wing (webhook/settings/)."""
