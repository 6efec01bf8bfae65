"""Limited-label fine-tuning of pretrained image encoders (``afloc-bench finetune``).

Pneumothorax segmentation on SIIM-ACR with a U-Net on the model's ResNet trunk (``seg``) and binary
classification (RSNA pneumonia) with a linear head on the pooled trunk (``cls``), trained on 1 %,
10 % or 100 % of the training patients (nested label fractions), following MGCA's protocols
(``docs/finetune.md``). Modules: ``config`` (YAML settings), ``fractions`` (splits and label
fractions by patient), ``data`` (samples, patients, resized arrays), ``encoders`` (the trunk, the
U-Net and the weight transfer), ``runs`` (run folder, resumable epoch loop, checkpoints, seeds
summary), ``seg`` and ``cls`` (training, evaluation, run records of each task).
"""
