"""The test suite's database tools, installed by aios_web/settings_test.py only: see management/commands/flush.py."""
