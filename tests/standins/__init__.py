"""Stand-ins for third-party services that cannot be reached from the test machine (tests only).

Each one is honest about what it is (it never claims to be the real thing) and records what
was asked of it, so a test can also assert that nothing unexpected was asked.
"""
