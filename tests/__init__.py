"""The test suite: every async test runs on asyncio and on trio (see the root conftest)."""
