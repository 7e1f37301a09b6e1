"""Self-supervised pretraining (SimCLR): an encoder learnt from unlabelled images, for the train stage to start
from (``model.pretrained: pretrain``)."""
