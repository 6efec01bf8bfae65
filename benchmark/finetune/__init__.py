"""Limited-label fine-tuning of pretrained image encoders (``afloc-bench finetune``).

Phase 1: pneumothorax segmentation on SIIM-ACR with a U-Net on the model's ResNet trunk, trained on
1 %, 10 % or 100 % of the training patients (nested label fractions), following MGCA's protocol
(``docs/finetune.md``). Modules: ``config`` (YAML settings), ``fractions`` (splits and label
fractions by patient), ``data`` (samples, patients, resized arrays), ``encoders`` (the U-Net and the
weight transfer) and ``seg`` (training, evaluation, run records).
"""
