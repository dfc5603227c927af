"""Settings come from the environment once; a wrong value fails at start and names its variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.config import DEFAULT_INPUT_BYTES, PROJECT_DIR, Settings, SettingsError, settings_table

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_need_nothing() -> None:
    s = Settings.from_env({})
    assert s.redis_url is None and s.uses_simulated_ai
    assert s.sqlite_path == ROOT / "var" / "aijobs.db"


def test_relative_paths_start_at_the_checkout_whatever_the_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI run from another directory opens the store `scripts/dev` (cwd: the checkout) uses, not ./var."""
    assert PROJECT_DIR == ROOT
    monkeypatch.chdir(tmp_path)
    s = Settings.from_env({})
    assert s.data_dir == ROOT / "var" and s.sqlite_path == ROOT / "var" / "aijobs.db"
    moved = Settings.from_env({"AIJOBS_DATA_DIR": "elsewhere"})  # the store follows the data directory
    assert moved.sqlite_path == ROOT / "elsewhere" / "aijobs.db"
    rel = Settings.from_env({"DATABASE_URL": "sqlite:///db/x.db"})
    assert rel.sqlite_path == ROOT / "db" / "x.db"
    absolute = Settings.from_env({"AIJOBS_DATA_DIR": str(tmp_path), "DATABASE_URL": f"sqlite:///{tmp_path}/y.db"})
    assert absolute.data_dir == tmp_path and absolute.sqlite_path == tmp_path / "y.db"


def test_an_input_cap_override_changes_only_the_types_it_names() -> None:
    s = Settings.from_env({"MAX_INPUT_BYTES": "titles=100"})
    assert s.input_byte_caps == {**DEFAULT_INPUT_BYTES, "titles": 100}
    assert Settings.from_env({}).input_byte_caps == DEFAULT_INPUT_BYTES


def test_an_unknown_job_type_in_the_input_caps_fails_at_start_naming_the_known_ones() -> None:
    with pytest.raises(SettingsError, match="MAX_INPUT_BYTES") as info:
        Settings.from_env({"MAX_INPUT_BYTES": "poem=5"})
    assert all(name in str(info.value) for name in ("titles", "summary", "chat", "image"))


def test_every_job_type_has_a_default_input_cap() -> None:
    from service.tasks import default_registry

    assert set(DEFAULT_INPUT_BYTES) == set(default_registry().names())


def test_the_websocket_frame_limit_lets_every_allowed_message_through() -> None:
    with pytest.raises(SettingsError, match="WS_MAX_SIZE"):
        Settings.from_env({"WS_MAX_SIZE": "1000", "WS_MAX_MESSAGE_BYTES": "4096"})


def test_values_are_parsed() -> None:
    s = Settings.from_env(
        {"PORT": "9000", "AIJOBS_SIM_DELAY": "0.5", "LOG_JSON": "false", "ALLOWED_ORIGINS": "https://a, http://b:8"}
    )
    assert (s.port, s.sim_delay, s.log_json, s.allowed_origins) == (9000, 0.5, False, ("https://a", "http://b:8"))


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


def test_database_url_picks_the_store_and_never_shows_its_password() -> None:
    pg = Settings.from_env({"DATABASE_URL": "postgresql://aijobs:s3cret@db.internal:5432/aijobs"})
    assert pg.uses_postgres and "s3cret" not in repr(pg) and "s3cret" not in pg.database_url_shown
    assert pg.database_url_shown == "postgresql://aijobs:***@db.internal:5432/aijobs"
    assert not Settings.from_env({}).uses_postgres
    with pytest.raises(ValueError, match="no SQLite file"):
        _ = pg.sqlite_path  # never a stray file named after the URL
    with pytest.raises(SettingsError, match="DATABASE_URL must be sqlite:///path or postgresql://"):
        Settings.from_env({"DATABASE_URL": "mysql://x/y"})


def test_json_log_lines_carry_no_terminal_colour_codes() -> None:
    """uvicorn's records carry `color_message` (ANSI escapes) for its console: a JSON line leaves it out."""
    import json
    import logging

    from service.logs import JsonFormatter

    record = logging.makeLogRecord(
        {"name": "uvicorn.error", "msg": "Started server process [%d]", "args": (7,), "levelname": "INFO"}
    )
    record.color_message = "Started server process [\x1b[36m%d\x1b[0m]"
    record.job_id = "j1"
    line = JsonFormatter().format(record)
    assert "\x1b" not in line and "\\u001b" not in line
    assert json.loads(line)["job_id"] == "j1" and json.loads(line)["msg"] == "Started server process [7]"
