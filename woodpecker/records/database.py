"""Tuning records in SQLite: hardware fingerprint x workload x implementation x config -> result.

WAL mode and one transaction per write make it safe under concurrent writers and a kill at
any moment; a file that is not our database raises RecordsError instead of being overwritten.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from woodpecker.errors import RecordsError
from woodpecker.kernels.workload import shape_features
from woodpecker.measure.result import MeasureResult
from woodpecker.records.fingerprint import fingerprint, fingerprint_id

SCHEMA_VERSION = 1
APPLICATION_ID = 0x57504B31  # "WPK1"


def default_path() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "woodpecker" / "records.sqlite"


class Records:
    """`readonly`: for listing and exporting; a missing file is then an error, not a new database."""

    def __init__(self, path: str | Path | None = None, readonly: bool = False):
        self.path = Path(path) if path else default_path()
        self.readonly = readonly
        if self.path.is_dir():
            raise RecordsError(f"{self.path}: is a directory, not a records database")
        if readonly and not self.path.is_file():
            raise RecordsError(f"{self.path}: no records database there")
        try:
            if not readonly:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            uri = f"{self.path.absolute().as_uri()}?mode={'ro' if readonly else 'rwc'}"
            self._db = sqlite3.connect(uri, uri=True, timeout=30, isolation_level=None)
            app_id = self._db.execute("PRAGMA application_id").fetchone()[0]
            tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        except OSError as exc:
            raise RecordsError(f"{self.path}: cannot create the records database ({exc.strerror})") from None
        except sqlite3.DatabaseError as exc:
            raise RecordsError(f"{self.path}: not a readable Woodpecker records database ({exc})") from None
        if (tables or readonly) and app_id != APPLICATION_ID:
            raise RecordsError(
                f"{self.path}: an SQLite file that is not a Woodpecker records database; choose another --records path"
            )
        self.hardware = fingerprint_id()
        if readonly:
            return
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            if not tables:
                self._create()
            self._db.execute("BEGIN IMMEDIATE")  # a write, undone: fails now on a file that cannot be written
            try:
                self._db.execute("INSERT OR REPLACE INTO hardware VALUES ('write-probe', '')")
            finally:
                self._db.execute("ROLLBACK")
            # Added after schema 1 shipped: what each workload key stands for, for transfer between workloads.
            if "workloads" not in tables:
                self._db.execute(
                    "CREATE TABLE IF NOT EXISTS workloads "
                    "(key TEXT PRIMARY KEY, op TEXT NOT NULL, description TEXT NOT NULL)"
                )
            known = self._db.execute("SELECT 1 FROM hardware WHERE id=?", (self.hardware,)).fetchone()
            if not known:  # opening for look-ups must not queue behind busy writers for the write lock
                self._db.execute(
                    "INSERT OR IGNORE INTO hardware VALUES (?, ?)", (self.hardware, json.dumps(fingerprint()))
                )
        except sqlite3.OperationalError as exc:
            self._db.close()
            message = f"{self.path}: cannot write the records ({exc}); choose another --records path"
            raise RecordsError(message) from None

    def _create(self) -> None:
        self._db.executescript(f"""
            BEGIN;
            PRAGMA application_id={APPLICATION_ID};
            PRAGMA user_version={SCHEMA_VERSION};
            CREATE TABLE IF NOT EXISTS hardware (id TEXT PRIMARY KEY, description TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS measurements (
                hardware TEXT NOT NULL, workload TEXT NOT NULL, impl TEXT NOT NULL, config TEXT NOT NULL,
                error TEXT, compile_s REAL, median_s REAL, result TEXT NOT NULL, created REAL NOT NULL,
                PRIMARY KEY (hardware, workload, impl, config));
            COMMIT;
        """)

    def lookup(self, workload: str, impl: str, config: dict) -> MeasureResult | None:
        row = self._db.execute(
            "SELECT result FROM measurements WHERE hardware=? AND workload=? AND impl=? AND config=?",
            (self.hardware, workload, impl, _config_key(config)),
        ).fetchone()
        return None if row is None else _result_from_json(json.loads(row[0]))

    def results(self, workload: str, impl: str) -> list[MeasureResult]:
        """Every recorded trial of `impl` on this workload and hardware."""
        rows = self._db.execute(
            "SELECT result FROM measurements WHERE hardware=? AND workload=? AND impl=? ORDER BY created",
            (self.hardware, workload, impl),
        ).fetchall()
        return [_result_from_json(json.loads(row[0])) for row in rows]

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; SQLite's failures (disk full, file made read-only) as RecordsError."""
        try:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                yield self._db
        except sqlite3.Error as exc:
            raise RecordsError(f"{self.path}: cannot write the records ({exc})") from None

    def describe(self, key: str, description: dict) -> None:
        with self._transaction():
            self._db.execute(
                "INSERT OR IGNORE INTO workloads VALUES (?, ?, ?)",
                (key, description["op"], json.dumps(description, sort_keys=True)),
            )

    def transfer(self, key: str, description: dict, impl: str, k: int = 3) -> list[dict]:
        """Best configs of `impl` on the k recorded workloads of the same op nearest to this one."""
        rows = self._db.execute(
            "SELECT w.key, w.description, m.config FROM workloads w JOIN measurements m ON m.workload = w.key "
            "WHERE w.op=? AND w.key<>? AND m.hardware=? AND m.impl=? AND m.error IS NULL "
            "AND m.median_s = (SELECT MIN(median_s) FROM measurements x WHERE x.hardware=m.hardware "
            "AND x.workload=m.workload AND x.impl=m.impl AND x.error IS NULL)",
            (description["op"], key, self.hardware, impl),
        ).fetchall()
        target = shape_features(description)
        scored = []
        for _, other, config in rows:
            features = shape_features(json.loads(other))
            if len(features) == len(target):
                scored.append((math.dist(features, target), json.loads(config)))
        scored.sort(key=lambda pair: pair[0])
        configs: list[dict] = []
        for _, config in scored:
            if config not in configs:
                configs.append(config)
        return configs[:k]

    def add(self, workload: str, result: MeasureResult, impl: str | None = None) -> None:
        """`impl`: the name to record it under (registry.record_name), if not `result.impl`."""
        payload = {
            "impl": result.impl,
            "config": result.config,
            "error": result.error,
            "compile_s": result.compile_s,
            "times_s": list(result.times_s),
            "max_rel_error": result.max_rel_error,
        }
        with self._transaction():
            self._db.execute(
                INSERT_MEASUREMENT, _row(self.hardware, workload, impl or result.impl, result, payload, time.time())
            )

    def summary(self) -> list[dict]:
        """Per workload and implementation on this hardware: configs measured, failures, best median."""
        rows = self._db.execute(
            "SELECT workload, impl, COUNT(*), SUM(error IS NOT NULL), MIN(median_s) FROM measurements "
            "WHERE hardware=? GROUP BY workload, impl ORDER BY workload, impl",
            (self.hardware,),
        ).fetchall()
        keys = ("workload", "impl", "configs", "failures", "best_median_s")
        return [dict(zip(keys, row)) for row in rows]

    def export_lines(self, all_hardware: bool = False) -> Iterator[str]:
        """JSON lines, one measurement each, with the hardware it was measured on."""
        descriptions = dict(self._db.execute("SELECT id, description FROM hardware").fetchall())
        query = "SELECT hardware, workload, impl, result, created FROM measurements"
        rows = (
            self._db.execute(query) if all_hardware else self._db.execute(query + " WHERE hardware=?", (self.hardware,))
        )
        for hardware, workload, impl, result, created in rows:
            yield json.dumps(
                {
                    "hardware": hardware,
                    "hardware_description": json.loads(descriptions[hardware]),
                    "workload": workload,
                    "impl": impl,
                    "result": json.loads(result),
                    "created": created,
                },
                sort_keys=True,
            )

    def import_lines(self, lines: Iterable[str], source: str = "input") -> dict:
        """Add exported measurements in one transaction: a malformed line rejects the whole import."""
        return self.import_records(parse_export(lines, source))

    def import_records(self, exported: Exported) -> dict:
        """Add what `parse_export` read, in one transaction. Returns how many records, how many of them
        were measured on other hardware (kept, but not used on this machine) and what differs in those
        machines' fingerprints."""
        with self._transaction():
            self._db.executemany("INSERT OR IGNORE INTO hardware VALUES (?, ?)", exported.hardware.items())
            self._db.executemany(INSERT_MEASUREMENT, exported.rows)
        foreign = {row[0] for row in exported.rows if row[0] != self.hardware}
        differs = {key for h in foreign for key in _differences(json.loads(exported.hardware[h]), fingerprint())}
        return {
            "records": len(exported.rows),
            "other_hardware": sum(row[0] in foreign for row in exported.rows),
            "differs": sorted(differs),
        }

    def count(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM measurements WHERE hardware=?", (self.hardware,)).fetchone()[0]

    def close(self) -> None:
        self._db.close()


@dataclass(frozen=True)
class Exported:
    """Records read from an export: measurement rows and the hardware they were measured on."""

    rows: list[tuple]
    hardware: dict[str, str]  # fingerprint id -> description (JSON)


def parse_export(lines: Iterable[str], source: str = "input") -> Exported:
    """Read `records export` lines; anything else (a binary file, a line that is no record) is a
    RecordsError naming the line, raised before any record is added."""
    rows, hardware = [], {}
    number = 0
    try:
        for line in lines:
            number += 1
            if not line.strip():
                continue
            item = json.loads(line)
            result = _result_from_json(item["result"])
            created = float(item["created"])
            rows.append(_row(item["hardware"], item["workload"], item["impl"], result, item["result"], created))
            hardware[item["hardware"]] = json.dumps(item["hardware_description"], sort_keys=True)
    except UnicodeDecodeError:
        raise RecordsError(f"{source}: not a records export (binary data at line {number + 1})") from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise RecordsError(f"{source}:{number}: not a Woodpecker record ({type(exc).__name__}: {exc})") from None
    return Exported(rows, hardware)


def _differences(theirs: dict, ours: dict, prefix: str = "") -> list[str]:
    """The fingerprint fields (e.g. "cpu", "versions.halide") whose values differ."""
    if not isinstance(theirs, dict):
        return [prefix.rstrip(".") or "fingerprint"]
    keys = set(theirs) | set(ours)
    found = []
    for key in sorted(keys):
        a, b = theirs.get(key), ours.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            found.append(f"{prefix}{key}")
    return found


INSERT_MEASUREMENT = "INSERT OR REPLACE INTO measurements VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"


def _row(hardware: str, workload: str, impl: str, result: MeasureResult, payload: dict, created: float) -> tuple:
    """A measurements row, columns in table order; `payload` is the result as stored (JSON)."""
    return (
        hardware,
        workload,
        impl,
        _config_key(result.config),
        result.error,
        result.compile_s,
        result.median_s if result.ok else None,
        json.dumps(payload),
        created,
    )


def _result_from_json(data: dict) -> MeasureResult:
    return MeasureResult(
        data["impl"],
        dict(data["config"]),
        data["error"],
        float(data["compile_s"]),
        tuple(float(t) for t in data["times_s"]),
        data.get("max_rel_error"),
    )


def _config_key(config: dict) -> str:
    return json.dumps(config, sort_keys=True)
