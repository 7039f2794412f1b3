"""Read the stack's Pulumi config into a validated StackConfig plus its secrets (as Outputs)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import pulumi

from .config import NAMESPACE, SECRETS, SECTIONS, ConfigError, Secrets, StackConfig, parse


@dataclass
class StackInputs:
    cfg: StackConfig
    proxmox_password: pulumi.Output[str] | None
    ssh_private_key: pulumi.Output[str] | None
    makemkv_key: pulumi.Output[str] | None
    status_password: pulumi.Output[str] | None = None
    jellyfin_admin_password: pulumi.Output[str] | None = None
    grafana_admin_password: pulumi.Output[str] | None = None
    alert_secrets: dict[str, pulumi.Output[str] | None] = field(default_factory=dict)
    queue_password: pulumi.Output[str] | None = None


def load(config: pulumi.Config | None = None) -> StackInputs:
    """Validate every key before any resource is declared; raise ConfigError with all problems."""
    config = config or pulumi.Config(NAMESPACE)
    raw: dict[str, Any] = {}
    for key in SECTIONS:
        value = config.get_object(key)
        if value is not None:
            raw[key] = value
    for key in configured_keys() - set(SECTIONS) - set(SECRETS):
        raw[key] = None  # parse() names it: a misspelt section would otherwise be ignored
    password = config.get_secret("proxmoxPassword")
    token = config.get_secret("proxmoxApiToken")
    ssh_key = config.get_secret("sshPrivateKey")
    mk_key = config.get_secret("makemkvKey")
    status_password = config.get_secret("statusPassword")
    jellyfin_password = config.get_secret("jellyfinAdminPassword")
    grafana_password = config.get_secret("grafanaAdminPassword")
    queue_password = config.get_secret("queuePassword")
    alert_secrets = {k: config.get_secret(k) for k in ("alertSmtpPassword", "alertTelegramToken", "alertWebhookToken")}
    secrets = Secrets(
        proxmox_password=password is not None,
        proxmox_api_token=token is not None,
        ssh_private_key=ssh_key is not None,
        makemkv_key=mk_key is not None,
        status_password=status_password is not None,
        jellyfin_admin_password=jellyfin_password is not None,
        grafana_admin_password=grafana_password is not None,
        alert_smtp_password=alert_secrets["alertSmtpPassword"] is not None,
        alert_telegram_token=alert_secrets["alertTelegramToken"] is not None,
        alert_webhook_token=alert_secrets["alertWebhookToken"] is not None,
        queue_password=queue_password is not None,
    )
    problems: list[str] = []
    try:
        cfg = parse(raw, secrets, require_secrets=True)
    except ConfigError as exc:
        problems = exc.messages
    problems += environment_problems(os.environ)
    if problems:
        raise ConfigError(problems)
    return StackInputs(cfg, password, ssh_key, mk_key, status_password, jellyfin_password, grafana_password,
                       alert_secrets, queue_password)


def configured_keys() -> set[str]:
    """Every key of this program's namespace the stack sets. pulumi.Config answers only for keys
    asked by name; the runtime holds the whole bag (from the engine, the language host's
    PULUMI_CONFIG, or lab/run-program.py's set_all_config)."""
    from pulumi.runtime import config as runtime_config

    prefix = f"{NAMESPACE}:"
    keys = set(runtime_config.CONFIG.get()) | set(runtime_config.get_config_env())
    return {k[len(prefix):] for k in keys if k.startswith(prefix)}


# The bpg provider also reads credentials from the environment, and a token there wins over
# the password: it would run on a token that cannot bind-mount the pool.
TOKEN_VARIABLES = ("PROXMOX_VE_API_TOKEN", "PM_VE_API_TOKEN", "PROXMOX_VE_AUTH_TICKET", "PM_VE_AUTH_TICKET")


def environment_problems(environ) -> list[str]:
    return [
        f"the environment variable {name} is set: the Proxmox provider would use it instead of "
        f"{NAMESPACE}:proxmoxPassword, and only root@pam with a password may bind-mount the pool into "
        f"privileged containers. Run `unset {name}` before pulumi preview/up."
        for name in TOKEN_VARIABLES
        if environ.get(name)
    ]


__all__ = ["ConfigError", "StackInputs", "load"]
