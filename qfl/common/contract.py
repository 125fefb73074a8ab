"""The contract between the parts: every name that crosses a package boundary.

ClientApp, transports, strategies and ServerApp meet only through Flower messages; this
module names what those messages carry, once. It imports nothing, so every package may
import it (the shared core, :mod:`qfl.common`).
``tests/test_contract.py`` checks that these strings are written nowhere else.
"""

from __future__ import annotations

# --- records of a message's RecordDict ------------------------------------------------
ARRAYS = "arrays"  # ArrayRecord: the model's parameters (both directions)
METRICS = "metrics"  # MetricRecord: a reply's numbers
CONFIG = "config"  # ConfigRecord: the server's instructions (Flower's name)
DEVICE = "device"  # ConfigRecord: who a reply says it is (claims, for the record)
MASK = "mask"  # ConfigRecord: per parameter, the coordinates that arrived (qcn), packed bits

# --- message types of our own (Flower's "query.<action>") ---------------------------------
WARM_UP_ACTION = "qfl_warm_up"  # the ServerApp asks every node to start its warm worker
SECAGG_ACTION = "qfl_secagg"  # a stage of secure aggregation beside the training message (keys, unmask)
# ConfigRecord the experiment engine puts into the ServerApp's context state: node ID (text) ->
# partition, as the simulation runtime assigned them; with it the warm-up asks no node (server/app.py)
SIMULATION_PARTITIONS = "qfl-simulation-partitions"

# --- secure aggregation (transport.secagg_flower) ------------------------------------------
SECAGG_RECORD = "secagg-stage"  # ConfigRecord: a stage's instructions and answers (also the warm-up's public key)
SECAGG_MASKED = "secagg-masked"  # ArrayRecord of a masked training reply: its one array, in Z_2^32
SECAGG_SUMMED = "secagg-summed"  # metric of the server's aggregate: how many clients' inputs it sums
SECAGG_DROPPED = "secagg-dropped"  # and how many of the nodes sampled it does not (they dropped)

# --- the server's instructions (CONFIG) ------------------------------------------------
SERVER_ROUND = "server-round"  # Flower's: the round within this ServerApp run
ROUND_OFFSET = "round-offset"  # rounds done before a resume: the run's round is the sum
PROXIMAL_MU = "proximal-mu"  # Flower's FedProx: the client adds mu/2 ||w - w_global||^2

# --- SCAFFOLD's control variates (ArrayRecords, the model's parameter names) --------------
CONTROL = "control"  # server -> client: the server's control variate c
CONTROL_DELTA = "control-delta"  # client -> server: the change of the client's c_i

# --- node config keys (``--node-config``; declared with their types in qfl.common.config) ---
NODE_PARTITION_ID = "partition-id"
NODE_NUM_PARTITIONS = "num-partitions"
NODE_DEVICE_PROFILE = "device-profile"
NODE_ZNE = "zne"
NODE_MITIGATION = "mitigation"
NODE_QCN_PATH = "qcn-path"
NODE_DP_MIN_NOISE_MULTIPLIER = "dp-min-noise-multiplier"  # the node's privacy floor: it trains only under local DP
NODE_DP_MAX_EPSILON = "dp-max-epsilon"  # this sigma or more, and until its own ledger reaches this epsilon
NODE_DP_DELTA = "dp-delta"  # the delta of the node's own epsilon (the server's dp-delta does not count here)
NODE_DP_LEDGER = "dp-ledger"  # the file of the node's own privacy ledger, kept across runs
NODE_WARM_WORKER = "warm-worker"  # a SuperNode whose ClientApps may hand work to a warm worker

# --- DEVICE keys -------------------------------------------------------------------------
DEVICE_PROFILE = "profile"
DEVICE_ZNE = NODE_ZNE
DEVICE_MITIGATION = NODE_MITIGATION  # none, zne or pec (DEVICE_ZNE stays: true with zne)
DEVICE_PARTITION = NODE_PARTITION_ID
DEVICE_NUM_PARTITIONS = NODE_NUM_PARTITIONS
DEVICE_CIRCUIT = "circuit-spec"  # the circuit the client ran (qfl.task.architecture.CircuitSpec.label)
# the guard pads a nested-depth reply to the global shapes for its screens and tells the strategy, in
# this ConfigRecord, how many leading rows of each array the client really sent (strategies.nested_fedavg)
NESTED_HELD_ROWS = "qfl-nested-held-rows"
DEVICE_KEYS = (DEVICE_PROFILE, DEVICE_ZNE, DEVICE_MITIGATION, DEVICE_PARTITION, DEVICE_NUM_PARTITIONS, DEVICE_CIRCUIT)

# --- METRICS of a training reply -------------------------------------------------------------
NUM_EXAMPLES = "num-examples"  # the weight FedAvg and friends use
TRAIN_LOSS = "train-loss"
TRAIN_ACCURACY = "train-accuracy"
TRAIN_TIME_S = "train-time-s"
NOISE_GAP = "noise-gap"  # noiseless minus noisy accuracy on the local data
UPDATE_NOISE_VAR = "update-noise-var"  # the client's estimate of (1/d) E||Delta - E_device[Delta]||^2 this round
NOISE_CONTRACTION = "noise-contraction"  # contraction c in (0, 1] of expectation values after its mitigation
PEC_GAMMA2 = "pec-gamma2"  # PEC sampling overhead gamma^2 (1 without PEC)
CIRCUIT_DEPTH = "circuit-depth"  # of the circuit as routed to the device
GATES = "gates"
TWO_QUBIT_GATES = "two-qubit-gates"
SWAPS = "swaps"
# the client's own circuit (heterogeneous circuits, qfl.task.qas): all data-independent
CIRCUIT_LAYERS = "circuit-layers"  # its depth L (the layers of the global model it holds)
PREDICTED_FIDELITY = "predicted-fidelity"  # estimated success probability of its routed circuit on its device
EFFECTIVE_DIMENSION = "effective-dimension"  # rank of its circuit's QFI at the received model, probe inputs
QAS_SCORE = "qas-score"  # the search's objective of the circuit it chose (-1: it did not search)
CIRCUIT_METRICS = (CIRCUIT_LAYERS, PREDICTED_FIDELITY, EFFECTIVE_DIMENSION, QAS_SCORE)
TRAIN_METRICS = (TRAIN_LOSS, TRAIN_ACCURACY, NUM_EXAMPLES, TRAIN_TIME_S, NOISE_GAP, CIRCUIT_DEPTH, GATES,
                 TWO_QUBIT_GATES, SWAPS, *CIRCUIT_METRICS)
# a client's claims about its own noise: a reply may carry them or not (an older client, a classical model)
NOISE_CLAIM_METRICS = (UPDATE_NOISE_VAR, NOISE_CONTRACTION, PEC_GAMMA2)

# added by the qcn transport on the way up
FIDELITY = "fidelity"  # mean fidelity of the pairs that carried the update
LATENCY_S = "latency-s"  # arrival time on the simulated network clock
QCN_LOST_FRACTION = "qcn-lost-fraction"
QCN_PAIRS = "qcn-pairs"  # end-to-end pairs (one per teleported carrier)
QCN_BELL_PAIRS = "qcn-bell-pairs"  # elementary Bell pairs they cost on the links (cutoff discards, distillation)
QCN_PAIRS_SAVED = "qcn-pairs-saved"  # Bell pairs compression saved against the uncompressed send
QCN_BYTES = "qcn-bytes"  # classical bytes the update needed (teleportation outcomes, scale, indices)
QCN_BYTES_SAVED = "qcn-bytes-saved"
QCN_METRICS = (FIDELITY, LATENCY_S, QCN_LOST_FRACTION, QCN_PAIRS, QCN_BELL_PAIRS, QCN_PAIRS_SAVED, QCN_BYTES,
               QCN_BYTES_SAVED)
# the shared quantum network's plan (transport.qcn_schedule): server -> node, and for the record
QCN_PLAN = "qcn-plan"  # ConfigRecord of a training message: the node's route and setting this round
QCN_RESIDUAL = "qcn-residual"  # ArrayRecord in a node's state: its error-feedback memory (compression)
SCHEDULE_DECISION = "qcn_decision"  # clients.csv columns: the server's decision and what it predicted
SCHEDULE_PREDICTED_FIDELITY = "qcn_predicted_fidelity"
SCHEDULE_PREDICTED_LOST = "qcn_predicted_lost"
SCHEDULE_PREDICTED_LATENCY_S = "qcn_predicted_latency_s"
SCHEDULE_PREDICTED_BELL_PAIRS = "qcn_predicted_bell_pairs"
SCHEDULE_COLUMNS = (SCHEDULE_DECISION, SCHEDULE_PREDICTED_FIDELITY, SCHEDULE_PREDICTED_LOST,
                    SCHEDULE_PREDICTED_LATENCY_S, SCHEDULE_PREDICTED_BELL_PAIRS)
# per round (metrics.csv, dashes become underscores): the qcn metrics above summed over the
# round's replies, and these
ROUND_QCN_NETWORK_S = "qcn-network-s"  # the round on the network clock: last arrival, or the deadline
ROUND_QCN_SERVED = "qcn-served"  # clients the plan served
ROUND_QCN_SCHEDULE_S = "qcn-schedule-s"  # wall-clock seconds the server spent planning the round
ROUND_QCN_BLOCKING_PAIRS = "qcn-blocking-pairs"  # of the association used
ROUND_QCN_OPTIMUM_GAP = "qcn-optimum-gap"  # the Hungarian optimum's total utility minus the association's
QCN_ROUND_METRICS = (QCN_BELL_PAIRS, QCN_PAIRS_SAVED, QCN_BYTES, QCN_BYTES_SAVED, ROUND_QCN_NETWORK_S, ROUND_QCN_SERVED,
                     ROUND_QCN_SCHEDULE_S, ROUND_QCN_BLOCKING_PAIRS, ROUND_QCN_OPTIMUM_GAP)

# --- METRICS of an evaluation reply ------------------------------------------------------------
EVAL_LOSS = "eval-loss"
EVAL_ACCURACY = "eval-accuracy"
EVAL_METRICS = (EVAL_LOSS, EVAL_ACCURACY, NUM_EXAMPLES)
# a regression run (run config task-kind) sends the same keys, so that every transport, DP and the guard
# treat its replies as a classifier's: the loss is its mean squared error and the accuracy slot its
# coefficient of determination R^2 (higher is better, 1 perfect; qfl.task.train)
TRAIN_R2 = TRAIN_ACCURACY
EVAL_R2 = EVAL_ACCURACY

# --- what strategies report about a round (strategies.delegating.RoundReport) ---------------
# per client: columns of clients.csv
REPORT_NOISE_VAR = "noise_var"
REPORT_SNR = "snr"
REPORT_WEIGHT = "weight"
REPORT_TRIMMED = "trimmed"
REPORT_LATE = "late"
REPORT_NOISE_SOURCE = "noise_source"  # where noise_var came from: claimed, contradicted, server-estimate, unseparated
REPORT_CONTRACTION = "contraction"  # the contraction c the strategy divided the update by (1: none)
REPORT_LAYERS = "layers_held"  # nested-fedavg: the layers of the global model the client's reply held
REPORT_CIRCUIT = "circuit_spec"  # nested-fedavg: the circuit the client says it ran
REPORT_COLUMNS = (REPORT_NOISE_VAR, REPORT_SNR, REPORT_WEIGHT, REPORT_TRIMMED, REPORT_LATE, REPORT_NOISE_SOURCE,
                  REPORT_CONTRACTION, REPORT_LAYERS, REPORT_CIRCUIT)
REPORT_NAMED = "named"  # not a column: a strategy's reason to name a client, added to its status in clients.csv
# per round: columns of metrics.csv (dashes become underscores there)
ROUND_STRAGGLERS = "stragglers"
ROUND_STALE_FOLDED = "stale-folded"
# --- what the server's guard counts of a round (its train metrics; metrics.csv columns too) ---
ROUND_CLIENTS_OK = "clients-ok"  # replies aggregated
ROUND_CLIENTS_FAILED = "clients-failed"  # errors and missing replies
ROUND_CLIENTS_REJECTED = "clients-rejected"  # replies the guard refused (each named in clients.csv)
ROUND_CLIENTS_TRIMMED = "clients-trimmed"  # replies a robust strategy left out
ROUND_CLIENTS_CAPPED = "clients-capped"  # replies with a claim (examples, fidelity) bounded
ROUND_AGGREGATION_FAILED = "aggregation-failed"

# --- the environment -------------------------------------------------------------------
CACHE_DIR_ENV = "QFL_CACHE_DIR"  # where prepared data sets are cached (launcher -> ClientApps)
