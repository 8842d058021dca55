"""Helpers the test suite shares: real services started per test session."""
