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
SECAGG_ACTION = "qfl_secagg"  # a stage of secure aggregation (keys, shares, unmask)

# --- secure aggregation (transport.secagg_flower) ------------------------------------------
SECAGG_RECORD = "secagg-stage"  # ConfigRecord: a stage's instructions and answers
SECAGG_MASKED = "secagg-masked"  # ArrayRecord of a masked training reply: its one array, in Z_2^32
SECAGG_SUMMED = "secagg-summed"  # metric of the server's aggregate: how many clients' inputs it sums
SECAGG_DROPPED = "secagg-dropped"  # and how many that shared keys dropped before their input counted

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
NODE_QCN_PATH = "qcn-path"
NODE_DP_MIN_NOISE_MULTIPLIER = "dp-min-noise-multiplier"  # the node's privacy floor: it trains only under local DP
NODE_DP_MAX_EPSILON = "dp-max-epsilon"  # this sigma or more, and until its own ledger reaches this epsilon
NODE_DP_DELTA = "dp-delta"  # the delta of the node's own epsilon (the server's dp-delta does not count here)
NODE_DP_LEDGER = "dp-ledger"  # the file of the node's own privacy ledger, kept across runs
NODE_WARM_WORKER = "warm-worker"  # a SuperNode whose ClientApps may hand work to a warm worker

# --- DEVICE keys -------------------------------------------------------------------------
DEVICE_PROFILE = "profile"
DEVICE_ZNE = NODE_ZNE
DEVICE_PARTITION = NODE_PARTITION_ID
DEVICE_NUM_PARTITIONS = NODE_NUM_PARTITIONS
DEVICE_KEYS = (DEVICE_PROFILE, DEVICE_ZNE, DEVICE_PARTITION, DEVICE_NUM_PARTITIONS)

# --- METRICS of a training reply -------------------------------------------------------------
NUM_EXAMPLES = "num-examples"  # the weight FedAvg and friends use
TRAIN_LOSS = "train-loss"
TRAIN_ACCURACY = "train-accuracy"
TRAIN_TIME_S = "train-time-s"
NOISE_GAP = "noise-gap"  # noiseless minus noisy accuracy on the local data
CIRCUIT_DEPTH = "circuit-depth"  # of the circuit as routed to the device
GATES = "gates"
TWO_QUBIT_GATES = "two-qubit-gates"
SWAPS = "swaps"
TRAIN_METRICS = (TRAIN_LOSS, TRAIN_ACCURACY, NUM_EXAMPLES, TRAIN_TIME_S, NOISE_GAP, CIRCUIT_DEPTH, GATES,
                 TWO_QUBIT_GATES, SWAPS)

# added by the qcn transport on the way up
FIDELITY = "fidelity"  # mean fidelity of the pairs that carried the update
LATENCY_S = "latency-s"  # arrival time on the simulated network clock
QCN_LOST_FRACTION = "qcn-lost-fraction"
QCN_PAIRS = "qcn-pairs"
QCN_METRICS = (FIDELITY, LATENCY_S, QCN_LOST_FRACTION, QCN_PAIRS)

# --- METRICS of an evaluation reply ------------------------------------------------------------
EVAL_LOSS = "eval-loss"
EVAL_ACCURACY = "eval-accuracy"
EVAL_METRICS = (EVAL_LOSS, EVAL_ACCURACY, NUM_EXAMPLES)

# --- what strategies report about a round (strategies.delegating.RoundReport) ---------------
# per client: columns of clients.csv
REPORT_NOISE_VAR = "noise_var"
REPORT_SNR = "snr"
REPORT_WEIGHT = "weight"
REPORT_TRIMMED = "trimmed"
REPORT_LATE = "late"
REPORT_COLUMNS = (REPORT_NOISE_VAR, REPORT_SNR, REPORT_WEIGHT, REPORT_TRIMMED, REPORT_LATE)
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
