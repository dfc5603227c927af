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


def test_extra_providers_are_parsed_and_their_keys_never_shown() -> None:
    from service.config import parse_providers

    raw = "backup=https://sk-backup-1@api.example.com/v1,local=http://127.0.0.1:11434/v1"
    s = Settings.from_env({"AI_PROVIDERS": raw})
    assert "sk-backup-1" not in repr(s)
    providers = parse_providers(s.ai_providers)
    assert providers["backup"].base_url == "https://api.example.com/v1" and providers["backup"].api_key == "sk-backup-1"
    assert providers["local"].base_url == "http://127.0.0.1:11434/v1" and providers["local"].api_key is None
    assert "sk-backup-1" not in repr(providers)
    for bad in ("openai=https://sk-taken@x.example/v1", "b=ftp://sk-odd@x.example", "=https://sk-x@x.example"):
        with pytest.raises(SettingsError, match="AI_PROVIDERS") as info:
            Settings.from_env({"AI_PROVIDERS": bad})
        assert "sk-" not in str(info.value)
