"""A node whose own data file is unusable refuses at the warm-up, before round 1, with the file,
the column and the reason; the server records which node refused and why; a sound node answers."""

from __future__ import annotations

from flwr.app import Context, Message, RecordDict

from client.app import DATA_ERROR_CODE, app
from qfl.common.config import defaults
from qfl.common.contract import WARM_UP_ACTION
from qfl.inprocess import stamp
from server.app import WarmUp

RUN = {**defaults(), "dataset": "file", "data-label": "y", "data-classes": "0,1", "data-num-features": 2,
       "data-min-samples": 4, "fraction-evaluate": 1.0}


def warm_up_reply(tmp_path, node: int, text: str) -> Message:  # noqa: ANN001
    path = tmp_path / f"node-{node}.csv"
    path.write_text(text)
    msg = stamp(Message(RecordDict(), dst_node_id=node, message_type=f"query.{WARM_UP_ACTION}"), message_id=f"w{node}")
    ctx = Context(run_id=1, node_id=node, node_config={"partition-id": node, "num-partitions": 2, "data-path": str(path)},
                  state=RecordDict(), run_config=RUN)
    return app(msg, ctx)


def test_an_unusable_file_is_refused_at_the_warm_up_naming_file_column_and_reason(tmp_path, task_identity) -> None:  # noqa: ANN001
    good = warm_up_reply(tmp_path, 0, "a,b,y\n" + "1,2,0\n3,4,1\n" * 3)
    bad = warm_up_reply(tmp_path, 1, "a,b,y\n" + "1,2,0\n3,,1\n" * 3)
    assert not good.has_error()
    assert bad.has_error() and bad.error.code == DATA_ERROR_CODE
    assert "node-1.csv" in bad.error.reason and "column 'b'" in bad.error.reason and "not numeric" in bad.error.reason


class RepliesGrid:
    """A grid that has the given warm-up replies ready."""

    def __init__(self, replies: dict[str, Message]) -> None:
        self.replies = replies

    def pull_messages(self, ids):  # noqa: ANN001, ANN201
        return [self.replies[i] for i in ids]


def test_the_server_records_which_node_refused_and_why(tmp_path, task_identity) -> None:  # noqa: ANN001
    good = warm_up_reply(tmp_path, 0, "a,b,y\n" + "1,2,0\n3,4,1\n" * 3)
    bad = warm_up_reply(tmp_path, 1, "a,b,y\n" + "1,2,0\n3,4,2\n" * 3)
    stamp(good, reply_to_message_id="w0")
    stamp(bad, reply_to_message_id="w1")
    warm_up = WarmUp(RepliesGrid({"w0": good, "w1": bad}), {"w0": 10, "w1": 11})
    assert warm_up.wait(timeout=5.0) == []
    assert list(warm_up.refused) == [11]
    assert "node-1.csv" in warm_up.refused[11] and "not a declared class (data-classes = 0, 1; first at row 2)" in warm_up.refused[11]
    assert warm_up.partitions == {10: 0}
