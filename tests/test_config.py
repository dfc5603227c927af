"""Settings come from the environment once; a wrong value fails at start and names its variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.config import Settings, SettingsError, settings_table


def test_defaults_need_nothing() -> None:
    s = Settings.from_env({})
    assert s.redis_url is None and s.uses_simulated_ai
    assert s.sqlite_path == Path("var/aijobs.db")


def test_values_are_parsed() -> None:
    s = Settings.from_env({"PORT": "9000", "AIJOBS_SIM_DELAY": "0.5", "LOG_JSON": "false", "ALLOWED_ORIGINS": "a, b"})
    assert (s.port, s.sim_delay, s.log_json, s.allowed_origins) == (9000, 0.5, False, ("a", "b"))


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"PORT": "eighty"}, "PORT"),
        ({"PORT": "70000"}, "PORT"),
        ({"WORKER_CONCURRENCY": "0"}, "WORKER_CONCURRENCY"),
        ({"REDIS_URL": "localhost:6379"}, "REDIS_URL"),
        ({"DATABASE_URL": "mysql://x"}, "DATABASE_URL"),
        ({"LOG_JSON": "maybe"}, "LOG_JSON"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], needle: str) -> None:
    with pytest.raises(SettingsError, match=needle):
        Settings.from_env(env)


def test_api_key_is_hidden_from_repr() -> None:
    assert "sk-secret" not in repr(Settings.from_env({"AI_API_KEY": "sk-secret"}))


def test_readme_documents_every_setting() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    missing = [env for env, _default, _doc in settings_table() if f"`{env}`" not in readme]
    assert not missing, f"README lacks settings: {missing}"
