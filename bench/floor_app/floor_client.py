"""The floor's ClientApp: returns the model it got, plus an example count."""

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    arrays = msg.content["arrays"]
    return Message(RecordDict({"arrays": ArrayRecord(arrays.to_numpy_ndarrays()), "metrics": MetricRecord({"num-examples": 1})}),
                   reply_to=msg)
