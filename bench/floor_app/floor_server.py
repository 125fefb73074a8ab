"""The floor's ServerApp: FedAvg over a small numpy model; writes each round's end time.

It polls for replies every 0.1 s, as qfl's ServerApp does (server.grid.MeteredGrid; Flower's
own grid waits 3 s between pulls), so that the comparison is of the clients' side alone.
"""

import json
import time

import numpy as np
from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from server.grid import MeteredGrid

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    grid = MeteredGrid(grid)
    while len(list(grid.get_node_ids())) < int(cfg["min-nodes"]):
        time.sleep(0.1)
    times = [time.time()]

    def on_round(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        if server_round > 0:
            times.append(time.time())
            with open(str(cfg["times-file"]), "w") as f:
                json.dump(times, f)
        return MetricRecord({})

    FedAvg(fraction_evaluate=0.0, min_available_nodes=int(cfg["min-nodes"])).start(
        grid=grid, initial_arrays=ArrayRecord([np.zeros((3, 4, 3)), np.zeros(3), np.zeros(3)]),
        num_rounds=int(cfg["num-server-rounds"]), evaluate_fn=on_round)
