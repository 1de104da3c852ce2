"""Which process holds a session: node URLs, worker slots and the sockets between workers."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from sluicegate.services.placement import ALONE, Placement, claim_slot, sockets_dir

if TYPE_CHECKING:
    from pathlib import Path

A, B = "http://a.internal:8000", "http://b.internal:8000"


def test_one_process_holds_everything_and_asks_nobody() -> None:
    assert not ALONE.coordinated
    assert ALONE.owner is None
    for owner in (None, A, f"{A}#w1", "#w2"):
        assert ALONE.route(owner) is None


def test_single_worker_nodes_pass_on_to_the_node_that_holds() -> None:
    a = Placement(node_url=A)
    assert a.coordinated and a.owner == A
    assert a.route(A) is None
    assert a.route(B) == B
    assert a.route(f"{B}#w3") == B  # B's worker passes it on to its sibling
    assert a.route(None) is None  # recorded before nodes were named: answered here


def test_workers_of_one_node_pass_on_to_their_siblings_socket(tmp_path: Path) -> None:
    w0 = Placement(node_url=A, slot=0, sockets=tmp_path)
    w1 = Placement(node_url=A, slot=1, sockets=tmp_path)
    assert w0.owner == A  # slot 0 is named as a single-worker node is: its sessions stay its own
    assert w1.owner == f"{A}#w1"
    assert (ALONE.spools, w0.spools, w1.spools) == ("spool", "spool", "spool-w1")
    assert w0.route(w1.owner) == f"unix:{tmp_path / 'w1.sock'}"
    assert w1.route(w0.owner) == f"unix:{tmp_path / 'w0.sock'}"
    assert w1.route(None) is None  # recorded before the node was named: nobody's to pass on to
    assert w0.route(w0.owner) is None and w1.route(w1.owner) is None
    assert w0.route(B) == B and w1.route(f"{B}#w1") == B


def test_workers_of_a_node_without_a_url_still_find_each_other(tmp_path: Path) -> None:
    w0 = Placement(slot=0, sockets=tmp_path)
    w2 = Placement(slot=2, sockets=tmp_path)
    assert w0.coordinated and w0.owner is None and w2.owner == "#w2"
    assert w0.route("#w2") == f"unix:{tmp_path / 'w2.sock'}"
    assert w2.route(None) == f"unix:{tmp_path / 'w0.sock'}"


def test_each_worker_claims_a_slot_of_its_own_and_a_dead_ones_slot_is_taken_again(tmp_path: Path) -> None:
    first, first_lock = claim_slot(tmp_path, 2)
    second, second_lock = claim_slot(tmp_path, 2)
    try:
        assert (first, second) == (0, 1)
        with pytest.raises(RuntimeError, match="all 2 worker slots"):
            claim_slot(tmp_path, 2)
        first_lock.close()  # the worker of slot 0 exits
        again, again_lock = claim_slot(tmp_path, 2)
        assert again == 0
        again_lock.close()
    finally:
        first_lock.close()
        second_lock.close()


def test_the_sockets_folder_is_short_whatever_the_data_folder(tmp_path: Path) -> None:
    deep = tmp_path / ("x" * 60) / ("y" * 60)
    deep.mkdir(parents=True)
    folder, other = sockets_dir(deep), sockets_dir(tmp_path)
    try:
        assert len(str(folder / "w15.sock")) < 100
        assert sockets_dir(deep) == folder != other
    finally:
        folder.rmdir()
        other.rmdir()


def test_a_sockets_folder_others_could_enter_is_refused(tmp_path: Path) -> None:
    folder = sockets_dir(tmp_path)
    folder.chmod(0o755)
    try:
        with pytest.raises(RuntimeError, match="private"):
            sockets_dir(tmp_path)
    finally:
        folder.chmod(0o700)
    assert sockets_dir(tmp_path) == folder
    folder.rmdir()
