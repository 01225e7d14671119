"""Speed and accuracy benchmarks of ibtools against the references a user would otherwise
pick; run by hand (``python -m benchmarks``), never by pytest.  See benchmarks/README.md."""
