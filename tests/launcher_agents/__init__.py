"""Small agents and configuration modules that the launcher tests run as real processes.

The agents record what happened to them as files in ``$LAUNCHER_TEST_DIR`` (the test's tmp_path).
"""
