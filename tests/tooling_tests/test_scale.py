"""What lets the experiment engine run 10,000 simulated clients: the simulation runtime's
message extractor in one pass a sweep, delivering what Flower's own delivers (Flower's link
state, no Ray; the figures are in bench/scale.py, not here)."""

from __future__ import annotations

from flwr.app import ConfigRecord, Message, RecordDict

from qfl.common.flower_internals import _first_undelivered, linear_message_extractor, simulated_link_state


def _link_state(nodes: int, pushes: list[int]):  # noqa: ANN202
    """Flower's in-memory link state with ``nodes`` registered simulated nodes (as the runtime
    registers them) and one instruction per entry of ``pushes`` (an index into the nodes),
    each carrying its position; the state and the node map."""
    link = simulated_link_state(nodes)
    state, mapping, grid = link.state, link.nodes, link.grid
    by_partition = {p: n for n, p in mapping.items()}
    grid.push_messages([Message(RecordDict({"which": ConfigRecord({"i": i})}), dst_node_id=by_partition[p],
                                message_type="query.test") for i, p in enumerate(pushes)])
    return state, mapping


def _delivered(messages: list[Message], mapping: dict[int, int]) -> set[tuple[int, int]]:
    return {(mapping[m.metadata.dst_node_id], int(m.content["which"]["i"])) for m in messages}


def test_one_pass_delivers_what_flowers_sweep_node_by_node_delivers():
    pushes = [3, 0, 3, 7, 9, 3]  # node 3 has three instructions: one a sweep, oldest first, as Flower's
    flower_state, flower_map = _link_state(12, pushes)
    state, mapping = _link_state(12, pushes)
    for sweep in range(4):
        flowers = [m for n in flower_map for m in flower_state.get_message_ins(node_id=n, limit=1)]
        ours = _first_undelivered(state, frozenset(mapping))
        assert _delivered(ours, mapping) == _delivered(flowers, flower_map), sweep
        assert all(m.metadata.delivered_at for m in ours)  # marked delivered, as get_message_ins marks them
    other, _ = _link_state(12, pushes)
    assert _first_undelivered(other, frozenset()) == []  # for no node of its own, the runtime takes none


def test_the_extractor_is_flowers_again_after_the_block():
    from flwr.server.superlink.fleet.vce import vce_api

    original = vce_api.add_messages_to_queue
    with linear_message_extractor():
        assert vce_api.add_messages_to_queue is not original
    assert vce_api.add_messages_to_queue is original


def test_a_ray_address_nothing_answers_at_fails_before_anything_starts(tmp_path, capsys):
    """``--ray-address`` (a running Ray cluster's head) is checked before any process or run
    starts, and the error names the flag; it goes with the simulation engine only."""
    from qfl.launcher import main

    assert main(["experiment", "scale", "--out", str(tmp_path), "--ray-address", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert "--ray-address" in err and "nothing accepts connections at 127.0.0.1:1" in err
    assert not (tmp_path / "scale").exists()
    assert main(["launch", "--check", "--simulation", "--ray-address", "ray://head:10001"]) == 2
    assert "expected HOST:PORT" in capsys.readouterr().err
    assert main(["launch", "--check", "--ray-address", "127.0.0.1:1"]) == 2
    assert "goes with --simulation only" in capsys.readouterr().err
