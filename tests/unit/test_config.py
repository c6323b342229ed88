"""``load_settings``: precedence, the development profile, and every fail-fast ``ConfigError``.

Every test passes its own ``environ`` and a state directory under ``tmp_path``; ``HOME`` is
pointed at ``tmp_path`` too, so that nothing can reach the real home directory.
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest

from gamegw.server.app import origin_checker
from gamegw.server.config import MIN_HMAC_KEY_BYTES, Settings, load_settings
from gamegw.server.protocol.errors import ConfigError

SECRET = "s" * MIN_HMAC_KEY_BYTES
DEV_ORIGINS = ("http://localhost:*", "http://127.0.0.1:*")


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)


@pytest.fixture
def state_home(tmp_path: Path) -> Path:
    return tmp_path / "state"


def write_toml(tmp_path: Path, text: str, name: str = "gamegw.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def prod_env(state_home: Path, **variables: str) -> dict[str, str]:
    """An environment for the production profile: a valid key plus the given variables."""
    env = {"XDG_STATE_HOME": str(state_home), "GAMEGW_JWT_SECRET": SECRET}
    env.update({f"GAMEGW_{k.upper()}": v for k, v in variables.items()})
    return env


def config_error(environ: dict[str, str], path: Path | None = None,
                 overrides: dict[str, Any] | None = None) -> str:
    """The message of the ConfigError that loading must raise; it is one line."""
    with pytest.raises(ConfigError) as info:
        load_settings(environ, path, overrides)
    message = str(info.value)
    assert message and "\n" not in message
    return message


# -- precedence ------------------------------------------------------------------------------


def test_file_then_env_then_overrides(tmp_path: Path, state_home: Path) -> None:
    path = write_toml(tmp_path, f'jwt_secret = "{SECRET}"\nport = 1111\ngrace_s = 7\ngame = "arena"\n')
    env = {"XDG_STATE_HOME": str(state_home), "GAMEGW_PORT": "2222", "GAMEGW_GRACE_S": "8.5"}

    from_file = load_settings({"XDG_STATE_HOME": str(state_home)}, path)
    assert (from_file.port, from_file.grace_s, from_file.game) == (1111, 7.0, "arena")

    from_env = load_settings(env, path)
    assert (from_env.port, from_env.grace_s, from_env.game) == (2222, 8.5, "arena")

    from_flags = load_settings(env, path, {"port": 3333})
    assert (from_flags.port, from_flags.grace_s, from_flags.game) == (3333, 8.5, "arena")


def test_unset_flags_do_not_mask_env_or_file(tmp_path: Path, state_home: Path) -> None:
    path = write_toml(tmp_path, f'jwt_secret = "{SECRET}"\nhost = "10.0.0.1"\n')
    settings = load_settings({"XDG_STATE_HOME": str(state_home), "GAMEGW_PORT": "2222"}, path,
                             {"port": None, "host": None, "redis_url": None})
    assert (settings.host, settings.port, settings.redis_url) == ("10.0.0.1", 2222, "")


def test_values_are_typed_from_file_and_env(tmp_path: Path, state_home: Path) -> None:
    path = write_toml(tmp_path, f'jwt_secret = "{SECRET}"\n'
                                'cors_allowed_origins = ["https://a.example", "https://b.example"]\n'
                                'websocket_compression = true\n')
    settings = load_settings({"XDG_STATE_HOME": str(state_home)}, path)
    assert settings.cors_allowed_origins == ("https://a.example", "https://b.example")
    assert settings.websocket_compression is True

    settings = load_settings(prod_env(state_home, cors_allowed_origins="https://a.example, https://c.example",
                                      websocket_compression="off", max_connections_per_user="3"))
    assert settings.cors_allowed_origins == ("https://a.example", "https://c.example")
    assert settings.websocket_compression is False
    assert settings.max_connections_per_user == 3


def test_env_names_are_prefix_plus_field_name(state_home: Path) -> None:
    settings = load_settings(prod_env(
        state_home, jwt_issuer="gamegw", jwt_audience="players", instance_id="gw-7",
        ping_interval_s="2", ping_timeout_s="3", on_connection_limit="refuse",
    ))
    assert settings.jwt_issuer == "gamegw" and settings.jwt_audience == "players"
    assert settings.instance_id == "gw-7"
    assert (settings.ping_interval_s, settings.ping_timeout_s) == (2.0, 3.0)
    assert settings.on_connection_limit == "refuse"


def test_instance_id_defaults_to_host_and_pid(state_home: Path) -> None:
    import os

    settings = load_settings(prod_env(state_home))
    assert settings.instance_id.endswith(f"-{os.getpid()}")


# -- development profile ---------------------------------------------------------------------


def test_dev_profile_when_nothing_is_configured(state_home: Path) -> None:
    settings = load_settings({"XDG_STATE_HOME": str(state_home)})
    assert settings.profile == "dev" and settings.dev
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)
    assert settings.redis_url == ""
    assert settings.algorithms == ("HS256",)
    assert settings.state_dir == str(state_home / "gamegw")
    assert len(settings.jwt_secret.encode()) >= MIN_HMAC_KEY_BYTES


def test_dev_key_is_kept_private_in_the_state_dir_and_reused(state_home: Path) -> None:
    first = load_settings({"XDG_STATE_HOME": str(state_home)})
    key_file = state_home / "gamegw" / "dev-jwt-secret"
    assert key_file.is_file()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert key_file.read_text().strip() == first.jwt_secret
    written = key_file.stat().st_mtime_ns

    second = load_settings({"XDG_STATE_HOME": str(state_home)})
    assert second.jwt_secret == first.jwt_secret
    assert key_file.stat().st_mtime_ns == written


def test_dev_key_goes_to_an_explicit_state_dir(tmp_path: Path) -> None:
    state_dir = tmp_path / "explicit"
    settings = load_settings({}, None, {"state_dir": str(state_dir)})
    assert settings.dev
    key_file = state_dir / "dev-jwt-secret"
    assert key_file.read_text().strip() == settings.jwt_secret
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert not (tmp_path / "home").exists()


def test_dev_keys_differ_between_state_dirs(tmp_path: Path) -> None:
    a = load_settings({"XDG_STATE_HOME": str(tmp_path / "a")})
    b = load_settings({"XDG_STATE_HOME": str(tmp_path / "b")})
    assert a.jwt_secret != b.jwt_secret


def test_dev_profile_allows_localhost_origins_only(state_home: Path) -> None:
    settings = load_settings({"XDG_STATE_HOME": str(state_home)})
    assert settings.cors_allowed_origins == DEV_ORIGINS
    allowed = origin_checker(settings)
    assert allowed("http://localhost:5173")
    assert allowed("http://127.0.0.1:8080")
    assert not allowed("http://example.com")
    assert not allowed("https://evil.example:5173")


def test_dev_profile_accepts_star_origins(state_home: Path) -> None:
    settings = load_settings({"XDG_STATE_HOME": str(state_home)}, None, {"cors_allowed_origins": "*"})
    assert settings.dev and settings.cors_allowed_origins == ("*",)


# -- production profile ----------------------------------------------------------------------


def test_prod_profile_when_a_file_is_given(tmp_path: Path, state_home: Path) -> None:
    path = write_toml(tmp_path, f'jwt_secret = "{SECRET}"\n')
    settings = load_settings({"XDG_STATE_HOME": str(state_home)}, path)
    assert settings.profile == "prod" and not settings.dev
    assert settings.jwt_secret == SECRET
    assert settings.cors_allowed_origins == ()
    assert not (state_home / "gamegw" / "dev-jwt-secret").exists()


def test_prod_profile_when_a_gamegw_variable_is_given(state_home: Path) -> None:
    settings = load_settings(prod_env(state_home))
    assert settings.profile == "prod"
    assert settings.jwt_secret == SECRET
    assert settings.cors_allowed_origins == ()
    assert not (state_home / "gamegw" / "dev-jwt-secret").exists()


def test_prod_profile_never_generates_a_key(state_home: Path) -> None:
    message = config_error({"XDG_STATE_HOME": str(state_home), "GAMEGW_PORT": "9000"})
    assert "jwt_secret" in message
    assert not (state_home / "gamegw").exists()


def test_file_may_choose_the_dev_profile(tmp_path: Path, state_home: Path) -> None:
    path = write_toml(tmp_path, 'profile = "dev"\ngame = "arena"\n')
    settings = load_settings({"XDG_STATE_HOME": str(state_home)}, path)
    assert settings.dev and settings.game == "arena"
    assert settings.cors_allowed_origins == DEV_ORIGINS
    assert (state_home / "gamegw" / "dev-jwt-secret").read_text().strip() == settings.jwt_secret


def test_public_key_configuration(tmp_path: Path, state_home: Path) -> None:
    pem = tmp_path / "public.pem"
    pem.write_text("-----BEGIN PUBLIC KEY-----\n-----END PUBLIC KEY-----\n")
    settings = load_settings({"XDG_STATE_HOME": str(state_home), "GAMEGW_JWT_PUBLIC_KEY_FILE": str(pem),
                              "GAMEGW_JWT_ALGORITHMS": "RS256,ES256"})
    assert settings.algorithms == ("RS256", "ES256")
    # A public key alone implies RS256.
    settings = load_settings({"XDG_STATE_HOME": str(state_home), "GAMEGW_JWT_PUBLIC_KEY_FILE": str(pem)})
    assert settings.algorithms == ("RS256",)


@pytest.mark.parametrize("url", ["redis://127.0.0.1:6379/0", "rediss://cache.example:6380", "redis://redis",
                                 "unix:///tmp/redis.sock"])
def test_good_redis_urls(state_home: Path, url: str) -> None:
    assert load_settings(prod_env(state_home, redis_url=url)).redis_url == url


# -- fail fast -------------------------------------------------------------------------------


@pytest.mark.parametrize("secret", ["short", "x" * (MIN_HMAC_KEY_BYTES - 1)])
def test_hmac_key_shorter_than_32_bytes(state_home: Path, secret: str) -> None:
    env = {"XDG_STATE_HOME": str(state_home), "GAMEGW_JWT_SECRET": secret}
    assert "jwt_secret" in config_error(env)


def test_hmac_key_length_counts_bytes(state_home: Path) -> None:
    # 16 characters, 32 bytes in UTF-8: long enough.
    load_settings({"XDG_STATE_HOME": str(state_home), "GAMEGW_JWT_SECRET": "é" * 16})
    # 31 characters, 31 bytes: too short, even though it is close.
    config_error({"XDG_STATE_HOME": str(state_home), "GAMEGW_JWT_SECRET": "é" * 15 + "x"})


def test_short_hmac_key_in_file(tmp_path: Path, state_home: Path) -> None:
    path = write_toml(tmp_path, 'jwt_secret = "too-short"\n')
    assert "jwt_secret" in config_error({"XDG_STATE_HOME": str(state_home)}, path)


def test_short_hmac_key_from_flags(state_home: Path) -> None:
    assert "jwt_secret" in config_error(prod_env(state_home), None, {"jwt_secret": "short"})


@pytest.mark.parametrize("algorithms", ["HS257", "none", "RS256,foo"])
def test_unknown_algorithm(tmp_path: Path, state_home: Path, algorithms: str) -> None:
    pem = tmp_path / "public.pem"
    pem.write_text("pem")
    env = prod_env(state_home, jwt_algorithms=algorithms, jwt_public_key_file=str(pem))
    assert "jwt_algorithms" in config_error(env)


def test_mixed_hmac_and_public_key_algorithms(tmp_path: Path, state_home: Path) -> None:
    pem = tmp_path / "public.pem"
    pem.write_text("pem")
    env = prod_env(state_home, jwt_algorithms="HS256,RS256", jwt_public_key_file=str(pem))
    assert "jwt_algorithms" in config_error(env)


def test_missing_public_key_file(tmp_path: Path, state_home: Path) -> None:
    env = prod_env(state_home, jwt_algorithms="RS256", jwt_public_key_file=str(tmp_path / "missing.pem"))
    assert "jwt_public_key_file" in config_error(env)


def test_public_key_algorithm_without_a_key_file(state_home: Path) -> None:
    assert "jwt_public_key_file" in config_error(prod_env(state_home, jwt_algorithms="ES256"))


@pytest.mark.parametrize("origins", ["*", "https://a.example,*"])
def test_star_origins_outside_dev(state_home: Path, origins: str) -> None:
    assert "cors_allowed_origins" in config_error(prod_env(state_home, cors_allowed_origins=origins))


def test_star_origins_in_a_prod_file(tmp_path: Path, state_home: Path) -> None:
    path = write_toml(tmp_path, f'jwt_secret = "{SECRET}"\ncors_allowed_origins = ["*"]\n')
    assert "cors_allowed_origins" in config_error({"XDG_STATE_HOME": str(state_home)}, path)


@pytest.mark.parametrize("url", ["localhost:6379", "http://127.0.0.1:6379", "redis://", "redis://host:port",
                                 "redis://host:99999", "not a url"])
def test_bad_redis_url(state_home: Path, url: str) -> None:
    assert "redis_url" in config_error(prod_env(state_home, redis_url=url))


def test_bad_redis_url_from_flag(state_home: Path) -> None:
    assert "redis_url" in config_error(prod_env(state_home), None, {"redis_url": "127.0.0.1:6379"})


def test_unknown_setting_in_file(tmp_path: Path, state_home: Path) -> None:
    path = write_toml(tmp_path, f'jwt_secret = "{SECRET}"\ncolour = "red"\n')
    assert "colour" in config_error({"XDG_STATE_HOME": str(state_home)}, path)


def test_missing_file(tmp_path: Path, state_home: Path) -> None:
    message = config_error({"XDG_STATE_HOME": str(state_home)}, tmp_path / "missing.toml")
    assert "missing.toml" in message


def test_unparsable_file(tmp_path: Path, state_home: Path) -> None:
    path = write_toml(tmp_path, "port = = 1\n")
    assert "gamegw.toml" in config_error({"XDG_STATE_HOME": str(state_home)}, path)


@pytest.mark.parametrize(("name", "value"), [("port", "eighty"), ("port", "80.5"), ("max_room_members", ""),
                                             ("move_log_size", "1e3x"), ("grace_s", "soon")])
def test_bad_number_from_env(state_home: Path, name: str, value: str) -> None:
    assert name in config_error(prod_env(state_home, **{name: value}))


@pytest.mark.parametrize("line", ["port = true", 'port = "eighty"', "port = [1]", 'grace_s = "soon"',
                                  "grace_s = false"])
def test_bad_number_in_file(tmp_path: Path, state_home: Path, line: str) -> None:
    path = write_toml(tmp_path, f'jwt_secret = "{SECRET}"\n{line}\n')
    assert line.split(" ")[0] in config_error({"XDG_STATE_HOME": str(state_home)}, path)


def test_bad_number_from_flag(state_home: Path) -> None:
    assert "port" in config_error(prod_env(state_home), None, {"port": "http"})


@pytest.mark.parametrize(("name", "value"), [("port", "70000"), ("port", "-1"), ("max_connections_per_user", "0"),
                                             ("ping_interval_s", "0"), ("grace_s", "-1"),
                                             ("jwt_max_token_bytes", "0"), ("jwt_max_lifetime_s", "0")])
def test_out_of_range(state_home: Path, name: str, value: str) -> None:
    assert name in config_error(prod_env(state_home, **{name: value}))


@pytest.mark.parametrize("name", ["ping_interval_s", "ping_timeout_s"])
def test_ping_figures_must_be_whole_milliseconds(state_home: Path, name: str) -> None:
    """The Engine.IO handshake advertises them in ms, and a client times its pings by them."""
    assert "whole number of milliseconds" in config_error(prod_env(state_home, **{name: "0.3005"}))
    assert getattr(load_settings(prod_env(state_home, **{name: "0.3"})), name) == 0.3


@pytest.mark.parametrize("policy", ["kick", "REPLACE", ""])
def test_bad_on_connection_limit(state_home: Path, policy: str) -> None:
    assert "on_connection_limit" in config_error(prod_env(state_home, on_connection_limit=policy))


@pytest.mark.parametrize("policy", ["replace", "refuse"])
def test_good_on_connection_limit(state_home: Path, policy: str) -> None:
    assert load_settings(prod_env(state_home, on_connection_limit=policy)).on_connection_limit == policy


@pytest.mark.parametrize("game", ["chess", "Relay", ""])
def test_unknown_game(state_home: Path, game: str) -> None:
    assert "game" in config_error(prod_env(state_home, game=game))


def test_unknown_game_in_file(tmp_path: Path, state_home: Path) -> None:
    path = write_toml(tmp_path, f'jwt_secret = "{SECRET}"\ngame = "chess"\n')
    assert "game" in config_error({"XDG_STATE_HOME": str(state_home)}, path)


def test_settings_repr_hides_the_key(state_home: Path) -> None:
    settings = load_settings(prod_env(state_home))
    assert isinstance(settings, Settings)
    assert SECRET not in repr(settings)


# -- key rotation ----------------------------------------------------------------------------

OLD = "o" * MIN_HMAC_KEY_BYTES


@pytest.mark.parametrize(("until", "epoch"), [
    ("1767225600", 1767225600.0),
    ("1767225600.5", 1767225600.5),
    ("2026-01-01T00:00:00Z", 1767225600.0),
    ("2026-01-01T01:00:00+01:00", 1767225600.0),
    ("2026-01-01T00:00:00", 1767225600.0),  # no offset: UTC
])
def test_previous_key_until(state_home: Path, until: str, epoch: float) -> None:
    settings = load_settings(prod_env(state_home, jwt_previous_secret=OLD, jwt_previous_key_until=until))
    assert settings.previous_key_until == epoch
    assert settings.previous_algorithms == ("HS256",)
    assert OLD not in repr(settings)


def test_previous_key_until_as_a_toml_datetime(tmp_path: Path, state_home: Path) -> None:
    path = write_toml(tmp_path, f'jwt_secret = "{SECRET}"\njwt_previous_secret = "{OLD}"\n'
                                'jwt_previous_key_until = 2026-01-01T00:00:00Z\n')
    assert load_settings({"XDG_STATE_HOME": str(state_home)}, path).previous_key_until == 1767225600.0


def test_previous_public_key_takes_the_main_algorithms_or_its_own(tmp_path: Path, state_home: Path) -> None:
    pem, old_pem = tmp_path / "new.pem", tmp_path / "old.pem"
    pem.write_text("pem")
    old_pem.write_text("pem")
    base = {"XDG_STATE_HOME": str(state_home), "GAMEGW_JWT_PUBLIC_KEY_FILE": str(pem),
            "GAMEGW_JWT_ALGORITHMS": "ES256", "GAMEGW_JWT_PREVIOUS_PUBLIC_KEY_FILE": str(old_pem),
            "GAMEGW_JWT_PREVIOUS_KEY_UNTIL": "1767225600"}
    assert load_settings(base).previous_algorithms == ("ES256",)
    assert load_settings({**base, "GAMEGW_JWT_PREVIOUS_ALGORITHMS": "RS256"}).previous_algorithms == ("RS256",)


@pytest.mark.parametrize(("variables", "setting"), [
    ({"jwt_previous_secret": OLD}, "jwt_previous_key_until"),
    ({"jwt_previous_key_until": "1767225600"}, "jwt_previous_key_until"),
    ({"jwt_previous_secret": OLD, "jwt_previous_key_until": "next tuesday"}, "jwt_previous_key_until"),
    ({"jwt_previous_secret": OLD, "jwt_previous_key_until": "-5"}, "jwt_previous_key_until"),
    ({"jwt_previous_secret": "short", "jwt_previous_key_until": "1767225600"}, "jwt_previous_secret"),
    ({"jwt_previous_secret": "x" * (MIN_HMAC_KEY_BYTES - 1), "jwt_previous_key_until": "1"}, "jwt_previous_secret"),
    ({"jwt_previous_secret": OLD, "jwt_previous_key_until": "1", "jwt_previous_algorithms": "HS256,RS256"},
     "jwt_previous_algorithms"),
    ({"jwt_previous_secret": OLD, "jwt_previous_key_until": "1", "jwt_previous_algorithms": "none"},
     "jwt_previous_algorithms"),
    ({"jwt_previous_secret": OLD, "jwt_previous_key_until": "1", "jwt_previous_algorithms": "RS256"},
     "jwt_previous_public_key_file"),
    ({"jwt_previous_public_key_file": "/nonexistent.pem", "jwt_previous_key_until": "1"},
     "jwt_previous_public_key_file"),
], ids=["no-until", "until-without-key", "bad-until", "negative-until", "short-secret", "31-bytes",
        "mixed-algorithms", "alg-none", "rs-without-public-key", "missing-public-key"])
def test_bad_previous_key(state_home: Path, variables: dict[str, str], setting: str) -> None:
    assert setting in config_error(prod_env(state_home, **variables))


def test_the_admin_listener_is_optional(tmp_path: Path, state_home: Path) -> None:
    unset = load_settings(prod_env(state_home))
    assert (unset.admin_port, unset.admin_listener) == (None, False)
    assert load_settings(prod_env(state_home, admin_port="")).admin_port is None
    env_set = load_settings(prod_env(state_home, admin_host="10.0.0.2", admin_port="9100"))
    assert (env_set.admin_host, env_set.admin_port, env_set.admin_listener) == ("10.0.0.2", 9100, True)
    assert load_settings(prod_env(state_home, admin_port="0")).admin_port == 0  # any free port
    from_file = load_settings({"XDG_STATE_HOME": str(state_home)},
                              write_toml(tmp_path, f'jwt_secret = "{SECRET}"\nadmin_port = 9200\n'))
    assert (from_file.admin_host, from_file.admin_port) == ("127.0.0.1", 9200)


@pytest.mark.parametrize(("variables", "words"), [
    ({"admin_port": "nine"}, "admin_port: 'nine' is not a valid int"),
    ({"admin_port": "70000"}, "admin_port: 70000 is out of range"),
    ({"admin_port": "8000", "port": "8000"}, "admin_port: 8000 is the game port"),
    ({"admin_port": "9000", "admin_host": ""}, "admin_host: empty"),
])
def test_bad_admin_listener(state_home: Path, variables: dict[str, str], words: str) -> None:
    assert words in config_error(prod_env(state_home, **variables))


def test_redis_wait_replicas(state_home: Path) -> None:
    assert load_settings(prod_env(state_home)).redis_wait_replicas == 0
    assert load_settings(prod_env(state_home, redis_wait_replicas="2")).redis_wait_replicas == 2
    assert config_error(prod_env(state_home, redis_wait_replicas="-1")) == (
        "redis_wait_replicas: must not be negative (0 turns it off)")
    cluster = "redis+cluster://127.0.0.1:7000/0"
    assert load_settings(prod_env(state_home, redis_url=cluster)).redis_url == cluster
    assert config_error(prod_env(state_home, redis_url=cluster, redis_wait_replicas="1")) == (
        "redis_wait_replicas: not with a Redis Cluster (redis+cluster://) in this build")
