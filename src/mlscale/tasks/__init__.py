"""Tasks: what is learnt from a batch, one module each (the trainer runs any of them).

    lm      next-token prediction on token shards (`mlscale pretrain`)

The fine-tuning tasks (sft, dpo) live with their data formats in mlscale.finetune.
Tasks register by name in mlscale.train.task.
"""
