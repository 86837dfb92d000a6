"""Engine configuration: TOML, mappings and VARS_* environment, with errors naming fields."""

from __future__ import annotations

import pytest

from vars_core.config import ConfigError, EngineConfig, config_from_env, load_config


def test_defaults_are_design_s():
    cfg = load_config(environ={})
    assert cfg == EngineConfig()
    assert (cfg.policy.tau, cfg.policy.list_size, cfg.reinforce.eta_long, cfg.reinforce.eta_short) == (1.0, 5, 0.001, 0.002)


def test_toml_then_environment(tmp_path):
    path = tmp_path / "vars.toml"
    path.write_text('judge = "llm"\n[agent]\nkind = "openai"\nbase_url = "http://a"\n[policy]\ntau = 0.5\n')
    env = {"VARS_POLICY__TAU": "0.25", "VARS_AGENT__MODEL": "qwen", "VARS_HOME": "/ignored", "VARS_CONFIG": str(path)}
    cfg = config_from_env(env)
    assert cfg.judge == "llm" and cfg.agent.base_url == "http://a"
    assert cfg.policy.tau == 0.25 and cfg.agent.model == "qwen"


@pytest.mark.parametrize(
    ("source", "field"),
    [
        ({"agent": {"kind": "gpt"}}, "agent.kind"),
        ({"policy": {"tau": "warm"}}, "policy.tau"),
        ({"polcy": {}}, "polcy"),
        ({"reranker": {"kind": "magic"}}, "reranker.kind"),
    ],
)
def test_bad_fields_are_named(source, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(source, environ={})


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.toml", environ={})
    bad = tmp_path / "bad.toml"
    bad.write_text("judge = ")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad, environ={})
