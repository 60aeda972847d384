"""The mitigation audit chain is keyed and anchored: a recomputed copy, a cut log and a lost row all show.

An attacker here can write the data folder (the log) but not the folder of the key,
which is where the key and the anchored head live.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import sqlite3
import stat

import pytest

from appliance.actions.mitigation.audit import COLUMNS, GENESIS, AuditKeyError, AuditLog
from appliance.actions.mitigation.mitigator import Mitigator
from appliance.cli import main
from tests.support.fakes import FakeWriter
from tests.support.mitigation import RUNNING, SP, event, make_cfg


def row(i: int, status: str = "advised") -> dict:
    return {"ts": 1_700_000_000.0 + i, "proposal_id": f"p{i}", "kind": "mitigate", "status": status,
            "actor": "appliance", "rule": "r", "asset": "pump1", "alarm_id": "a1", "node": SP,
            "old_value": 100.0, "new_value": 80.0, "reason": "test", "guard": None, "detail": "", "armed": False}


def key_in(tmp_path):
    return tmp_path / "etc" / "audit.key"


def recompute_chain_unkeyed(db_path) -> None:
    """What anyone can do with SHA-256 alone: rewrite every row's chain value in order."""
    db = sqlite3.connect(db_path)
    db.execute("DROP TRIGGER IF EXISTS audit_no_update")
    prev = GENESIS
    for r in db.execute(f"SELECT seq, {', '.join(COLUMNS)} FROM audit ORDER BY seq").fetchall():
        body = json.dumps(list(r[1:]), separators=(",", ":"), default=str)
        h = hashlib.sha256((prev + body).encode()).hexdigest()
        db.execute("UPDATE audit SET prev_hash = ?, hash = ? WHERE seq = ?", (prev, h, r[0]))
        prev = h
    db.commit()
    db.close()


def test_a_copy_with_its_chain_recomputed_does_not_verify(tmp_path):
    data = tmp_path / "data"
    log = AuditLog(data / "audit.db", key_in(tmp_path))
    for i in range(1, 4):
        log.append(row(i))
    assert log.verify() is None
    log.close()

    db = sqlite3.connect(data / "audit.db")
    db.execute("DROP TRIGGER audit_no_update")
    db.execute("UPDATE audit SET new_value = 30, detail = 'nothing to see' WHERE seq = 2")
    db.commit()
    db.close()
    recompute_chain_unkeyed(data / "audit.db")

    log = AuditLog(data / "audit.db", key_in(tmp_path))
    assert log.verify() == 1  # the recomputed chain is not keyed: the first row already fails
    assert "chain broken at seq 1" in log.problem() and "\n" not in log.problem()
    log.close()


def test_a_log_cut_short_or_restored_from_an_older_copy_stays_reported(tmp_path):
    data = tmp_path / "data"
    log = AuditLog(data / "audit.db", key_in(tmp_path))
    log.append(row(1))
    log.close()
    shutil.copyfile(data / "audit.db", tmp_path / "old.db")
    log = AuditLog(data / "audit.db", key_in(tmp_path))
    log.append(row(2))
    seq, head = log.append(row(3, "written"))
    log.close()

    shutil.copyfile(tmp_path / "old.db", data / "audit.db")  # every row of it genuine, two missing
    for p in data.glob("audit.db-*"):
        p.unlink()
    log = AuditLog(data / "audit.db", key_in(tmp_path))
    assert log.verify() == 3
    assert "does not extend its anchored head 3:" in log.problem()
    # Rows appended to the cut log are keyed and chained, yet cannot make it whole again.
    log.append(row(4))
    log.close()
    log = AuditLog(data / "audit.db", key_in(tmp_path))
    assert log.verify() == 3 and "rows removed or an older copy restored" in log.problem()
    log.close()


def test_an_anchor_the_cloud_received_is_checked(tmp_path):
    data = tmp_path / "data"
    log = AuditLog(data / "audit.db", key_in(tmp_path))
    anchors = [log.append(row(i)) for i in range(1, 4)]
    assert log.verify(anchors[1]) is None
    assert log.verify((2, "0" * 64)) == 2
    assert "differs from the anchored head 2:" in log.problem((2, "0" * 64))
    assert log.verify((9, anchors[2][1])) == 9
    log.close()


def test_an_unkeyed_log_is_migrated_after_its_old_chain_verifies(tmp_path, caplog):
    data = tmp_path / "data"
    data.mkdir()
    db_path = data / "audit.db"
    # A log of the previous release: the same table, the plain SHA-256 chain.
    log = AuditLog(db_path, key_in(tmp_path))
    log.close()
    db = sqlite3.connect(db_path)
    for i in range(1, 3):
        r = row(i)
        db.execute(f"INSERT INTO audit ({', '.join(COLUMNS)}, prev_hash, hash) VALUES "
                   f"({', '.join('?' * len(COLUMNS))}, '', '')", [r[c] for c in COLUMNS])
    db.commit()
    db.close()
    recompute_chain_unkeyed(db_path)
    for p in key_in(tmp_path).parent.glob("*.head"):
        p.unlink()  # as before keying: no head

    log = AuditLog(db_path, key_in(tmp_path))
    assert log.head().keyed_from == 3 and log.head().seq == 2
    assert "2 rows written before keying verified" in caplog.text
    log.append(row(3))
    assert log.verify() is None
    log.close()
    # From the head on, an unkeyed rewrite is refused: all of it, the migrated rows' chain included.
    recompute_chain_unkeyed(db_path)
    log = AuditLog(db_path, key_in(tmp_path))
    assert log.verify() == 3
    log.close()


def test_the_key_is_made_private_outside_the_data_folder(tmp_path):
    key = key_in(tmp_path)
    AuditLog(tmp_path / "data" / "audit.db", key).close()
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and len(bytes.fromhex(key.read_text())) == 32
    with pytest.raises(AuditKeyError, match="inside the data folder"):
        AuditLog(tmp_path / "data" / "audit.db", tmp_path / "data" / "audit.key")
    os.chmod(key, 0o644)
    with pytest.raises(AuditKeyError, match="readable by group or others"):
        AuditLog(tmp_path / "data" / "audit.db", key)


def test_records_carry_the_head_and_an_approval_names_the_role(tmp_path):
    async def go():
        cfg = make_cfg(require_approval=True, readback_delay_s=0, audit_key=str(key_in(tmp_path)))
        m = Mitigator(cfg, tmp_path / "data", FakeWriter({SP: 100.0, RUNNING.node: 1.0}))
        try:
            (pending,) = await m.on_alarm_event(event())
            assert pending.status == "pending_approval" and pending.audit_seq == 1
            written = await m.approve(pending.proposal_id, "eve", role="engineer")
            assert written.status == "written"
            assert (written.audit_seq, written.audit_hash) == (3, m.audit.head().hash)
            assert m.audit.verify((written.audit_seq, written.audit_hash)) is None
            approved = m.audit_log(5)[1]
            assert (approved["status"], approved["detail"]) == ("approved", "approved by engineer eve")
            assert m.status()["audit_chain"]["problem"] is None
        finally:
            await m.close()
    asyncio.run(go())


def test_appliance_audit_verify_reports_in_one_line(tmp_path, capsys):
    key = key_in(tmp_path)
    data = tmp_path / "data"
    log = AuditLog(data / "mitigation_audit.db", key)
    seq, head = log.append(row(1))
    log.close()
    cfg = tmp_path / "appliance.toml"
    cfg.write_text(f'data_dir = "{data}"\n[outputs.mitigation]\nenabled = true\naudit_key = "{key}"\n')
    assert main(["audit", "verify", "--config", str(cfg), "--anchor", f"{seq}:{head}"]) == 0
    assert "audit log intact: 1 rows, head 1:" in capsys.readouterr().out
    assert main(["audit", "verify", "--config", str(cfg), "--anchor", f"2:{head}"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("audit log") and "ends before the anchored head 2:" in err and "\n" not in err
