"""Champion/previous aliases in the MLflow model registry, moved by a
`samtune.lifecycle.promotion.Decision`.

Aliases (MLflow 3; stages are deprecated and never used):
    champion  the version serving; moved to a challenger only when its decision says promote.
    previous  the champion before the last promotion (one level of history: the version that
              was `previous` before loses the alias). `rollback` moves `champion` back to it and
              REMOVES `previous`, so a second rollback fails clearly instead of bouncing back to
              the version just rolled back; that version is tagged `promotion.rolled_back`
              (and `promotion.rolled_back_to`) and is never promoted again.
Every decision is stored as tags on the challenger version (`promotion.decision`, `.reason`,
`.challenger_mean`, `.champion_mean`, `.mean_diff`, `.ci_low`, `.ci_high`, `.n`, `.evidence`,
and `.compared_with`: the champion version it was compared with, or `none`), and its evidence
(pairs, CI, config) as `promotion/decision_v<challenger>_vs_<champion|none>.json` in the
challenger's source run. A decision is applied once per (challenger, champion) pair: when the
challenger already is champion or carries `promotion.compared_with` equal to the current
champion, nothing is written and the stored decision is returned.

`mlflow` is imported inside the functions, so importing samtune never needs it."""
from __future__ import annotations

import json
import logging
import socket
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from samtune.lifecycle.promotion import Decision

log = logging.getLogger(__name__)

TAG = "promotion."
NO_CHAMPION = "none"
DB_SCHEMES = ("postgresql", "mysql", "mssql")


class RegistryError(RuntimeError):
    """A registry state or request that promotion cannot act on; the message says what to do."""


def check_reachable(tracking_uri: str, timeout_s: float = 3.0) -> None:
    """Fail within ~`timeout_s` (no MLflow retry loop) when the store behind `tracking_uri` is
    unreachable: http(s) → GET `<uri>/health` (any answer below 500 counts as reachable);
    sqlite/file/plain paths → the database's folder or the store must exist; postgresql, mysql,
    mssql → a TCP connection to host:port. Other schemes (e.g. databricks) are not checked."""
    parsed = urllib.parse.urlparse(tracking_uri)
    scheme = parsed.scheme.lower()
    if scheme in ("http", "https"):
        url = tracking_uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as response:
                status = response.status
        except urllib.error.HTTPError as err:
            status = err.code
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise RegistryError(f"MLflow tracking server {tracking_uri} is unreachable "
                                f"({reason}); start it or fix the tracking URI") from None
        if status >= 500:
            raise RegistryError(f"MLflow tracking server {tracking_uri} answered HTTP {status} "
                                "on /health; it is not serving")
    elif scheme == "sqlite":
        path = tracking_uri[len("sqlite:///"):] if tracking_uri.startswith("sqlite:///") else ""
        if path and path != ":memory:" and not Path(path).parent.is_dir():
            raise RegistryError(f"MLflow store {tracking_uri}: folder {Path(path).parent} "
                                "does not exist")
    elif scheme in ("", "file"):
        path = Path(parsed.path if scheme == "file" else tracking_uri)
        if not path.exists():
            raise RegistryError(f"MLflow store {tracking_uri}: {path} does not exist")
    elif scheme.split("+")[0] in DB_SCHEMES:
        try:
            socket.create_connection((parsed.hostname or "localhost", parsed.port or 5432),
                                     timeout=timeout_s).close()
        except OSError as err:
            raise RegistryError(f"MLflow store {tracking_uri} is unreachable ({err})") from None


def _tag(value: Any) -> str:
    """A tag value as text: None → `none`, bools → `true`/`false`, floats at full precision."""
    if value is None:
        return NO_CHAMPION
    if isinstance(value, bool):
        return str(value).lower()
    return repr(float(value)) if isinstance(value, float) else str(value)


def _not_found(err: Exception) -> bool:
    return getattr(err, "error_code", "") == "RESOURCE_DOES_NOT_EXIST"


@dataclass(frozen=True)
class PromotionOutcome:
    """What `apply_decision` did. `applied` False: nothing was written and `decision` is the
    stored one (None when the challenger became champion without a recorded decision)."""

    applied: bool
    decision: Decision | None
    challenger: str
    compared_with: str | None
    champion: str | None
    previous: str | None
    evidence: str | None


class AliasRegistry:
    """Champion/previous aliases of registered models in the registry at `tracking_uri` (the
    registry URI is the same unless given). Each public call first checks reachability."""

    def __init__(self, tracking_uri: str, *, registry_uri: str | None = None,
                 champion_alias: str = "champion", previous_alias: str = "previous",
                 timeout_s: float = 3.0) -> None:
        self.tracking_uri = tracking_uri
        self.registry_uri = registry_uri or tracking_uri
        self.champion_alias, self.previous_alias = champion_alias, previous_alias
        self.timeout_s = timeout_s

    @classmethod
    def from_config(cls, tracking_uri: str, registry: Any) -> "AliasRegistry":
        """From a `RegistryConfig` (alias names) and the stack's tracking URI."""
        return cls(tracking_uri, champion_alias=registry.champion_alias,
                   previous_alias=registry.previous_alias)

    def _client(self) -> Any:
        from mlflow import MlflowClient

        check_reachable(self.tracking_uri, self.timeout_s)
        if self.registry_uri != self.tracking_uri:
            check_reachable(self.registry_uri, self.timeout_s)
        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.registry_uri)

    def _aliases(self, client: Any, name: str) -> dict[str, str]:
        try:
            return {k: str(v) for k, v in client.get_registered_model(name).aliases.items()}
        except Exception as err:
            if not _not_found(err):
                raise
        raise RegistryError(f"no registered model '{name}' at {self.registry_uri}")

    def _version(self, client: Any, name: str, version: str) -> Any:
        try:
            return client.get_model_version(name, version)
        except Exception as err:
            if not _not_found(err):
                raise
        known = sorted(int(mv.version) for mv in client.search_model_versions(f"name = '{name}'"))
        raise RegistryError(f"registered model '{name}' has no version {version} "
                            f"(its versions: {known or 'none'})") from None

    def resolve_version(self, name: str, version: str | int) -> Any:
        """The ModelVersion for a version number, `models:/<name>/<n>` or `models:/<name>@<alias>`;
        RegistryError when it names another registered model or does not exist under `name`."""
        return self._resolve(self._client(), name, version)

    def _resolve(self, client: Any, name: str, version: str | int) -> Any:
        text = str(version).strip()
        if text.startswith("models:/"):
            ref = text[len("models:/"):]
            sep = "@" if "@" in ref else "/"
            owner, _, tail = ref.rpartition(sep)
            if owner != name:
                raise RegistryError(f"{text} belongs to registered model '{owner}', not "
                                    f"'{name}'; promote it under its own name")
            if sep == "@":
                text = self._aliases(client, name).get(tail, "")
                if not text:
                    raise RegistryError(f"registered model '{name}' has no alias '{tail}'")
            else:
                text = tail
        if not text.isdigit():
            raise RegistryError(f"'{version}' is not a version of '{name}' (expected a number, "
                                "models:/NAME/N or models:/NAME@ALIAS); register it first")
        return self._version(client, name, text)

    def _require_files(self, client: Any, mv: Any, role: str) -> str:
        """The version's download URI, or RegistryError when nothing is stored there."""
        import mlflow

        uri = client.get_model_version_download_uri(mv.name, mv.version)
        try:
            files = mlflow.artifacts.list_artifacts(artifact_uri=uri,
                                                    tracking_uri=self.tracking_uri)
        except Exception as err:  # a missing folder raises in some artifact repositories
            log.debug("listing %s failed: %s", uri, err)
            files = []
        if not files:
            raise RegistryError(f"{role} version {mv.version} of {mv.name} has no model files "
                                f"at {uri}; re-register or roll back")
        return uri

    def champion_version(self, name: str, *, check_files: bool = True) -> str | None:
        """The version behind the champion alias (None without one); with `check_files`, a
        RegistryError when its model files are missing."""
        client = self._client()
        champ = self._aliases(client, name).get(self.champion_alias)
        if champ and check_files:
            self._require_files(client, self._version(client, name, champ), "champion")
        return champ

    def stored_decision(self, name: str, version: str | int) -> Decision | None:
        """The decision recorded on `version` (from its evidence artifact), None without one."""
        client = self._client()
        return self._stored(client, self._resolve(client, name, version))

    def _stored(self, client: Any, mv: Any) -> Decision | None:
        path = mv.tags.get(f"{TAG}evidence")
        if not path or not mv.run_id:
            return None
        with tempfile.TemporaryDirectory() as tmp:
            local = client.download_artifacts(mv.run_id, path, tmp)
            return Decision.from_dict(json.loads(Path(local).read_text()))

    def apply_decision(self, name: str, challenger_version: str | int, decision: Decision,
                       evidence_dir: str | Path) -> PromotionOutcome:
        """Record `decision` on the challenger (tags + evidence JSON written to `evidence_dir`
        and logged to its source run) and, if it promotes, move champion → challenger and
        previous → the former champion. See the module docstring for idempotency."""
        client = self._client()
        mv = self._resolve(client, name, challenger_version)
        version = str(mv.version)
        if not mv.run_id:
            raise RegistryError(f"version {version} of {name} has no source run; its evidence "
                                "cannot be logged (register it from a run)")
        aliases = self._aliases(client, name)
        champ, prev = aliases.get(self.champion_alias), aliases.get(self.previous_alias)
        compared, done = champ or NO_CHAMPION, mv.tags.get(f"{TAG}compared_with")
        if champ == version or done == compared:
            stored = self._stored(client, mv)
            if stored is not None and stored.promote != decision.promote:
                log.warning("%s v%s vs %s was already decided (promote=%s); the new decision "
                            "(promote=%s) is not applied", name, version, compared,
                            stored.promote, decision.promote)
            log.info("%s v%s vs %s already decided; nothing written", name, version, compared)
            return PromotionOutcome(False, stored, version, None if done in (None, NO_CHAMPION)
                                    else done, champ, prev, mv.tags.get(f"{TAG}evidence"))
        if (decision.champion_mean is None) != (champ is None):
            raise RegistryError(
                f"the decision was made {'without' if champ else 'against'} a champion, but "
                f"{name} has {'champion version ' + champ if champ else 'no champion'}; "
                "decide again against the current champion")
        if champ:
            self._require_files(client, self._version(client, name, champ), "champion")
        if decision.promote:
            if mv.tags.get(f"{TAG}rolled_back") == "true":
                raise RegistryError(f"version {version} of {name} was rolled back from "
                                    "champion; it is not promoted again (register a new one)")
            self._require_files(client, mv, "challenger")
        evidence = self._log_evidence(client, mv, decision, compared, Path(evidence_dir))
        if decision.promote:
            if champ:
                client.set_registered_model_alias(name, self.previous_alias, champ)
                prev = champ
            client.set_registered_model_alias(name, self.champion_alias, version)
            log.info("%s: %s → v%s, %s → v%s", name, self.champion_alias, version,
                     self.previous_alias, prev)
        tags = {"decision": "promoted" if decision.promote else "rejected",
                "reason": decision.reason, "challenger_mean": decision.challenger_mean,
                "champion_mean": decision.champion_mean, "mean_diff": decision.mean_diff,
                "ci_low": decision.ci_low, "ci_high": decision.ci_high, "n": decision.n,
                "evidence": evidence, "compared_with": compared}  # written last: marks done
        for key, value in tags.items():
            client.set_model_version_tag(name, version, f"{TAG}{key}", _tag(value))
        return PromotionOutcome(True, decision, version, champ,
                                version if decision.promote else champ, prev, evidence)

    def _log_evidence(self, client: Any, mv: Any, decision: Decision, compared: str,
                      folder: Path) -> str:
        """Write the evidence JSON and log it under `promotion/` of the challenger's run."""
        vs = compared if compared == NO_CHAMPION else f"v{compared}"
        file = folder / f"decision_v{mv.version}_vs_{vs}.json"
        folder.mkdir(parents=True, exist_ok=True)
        data = {**decision.to_dict(), "registered_model": mv.name,
                "challenger_version": str(mv.version), "compared_with": compared}
        file.write_text(json.dumps(data, indent=2, sort_keys=True))
        client.log_artifact(mv.run_id, str(file), "promotion")
        return f"promotion/{file.name}"

    def rollback(self, name: str) -> tuple[str, str | None]:
        """Move champion to the `previous` version and remove `previous`; the rolled-back
        version is tagged. Returns (new champion, rolled-back version or None)."""
        client = self._client()
        aliases = self._aliases(client, name)
        prev, champ = aliases.get(self.previous_alias), aliases.get(self.champion_alias)
        if not prev:
            raise RegistryError(f"{name} has no '{self.previous_alias}' alias: nothing to roll "
                                "back to")
        self._require_files(client, self._version(client, name, prev), self.previous_alias)
        client.set_registered_model_alias(name, self.champion_alias, prev)
        client.delete_registered_model_alias(name, self.previous_alias)
        if champ and champ != prev:
            client.set_model_version_tag(name, champ, f"{TAG}rolled_back", "true")
            client.set_model_version_tag(name, champ, f"{TAG}rolled_back_to", prev)
        log.info("%s: rolled back %s v%s → v%s", name, self.champion_alias, champ, prev)
        return prev, champ
