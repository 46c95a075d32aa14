"""The paper's protocol as one resumable stage graph (`run/reproduce.py`).

  scales.py     what each scale runs (the paper's section 6.2, or the CPU
                campaign's reduced protocol), the paper's numbers, the
                measured per-stage costs
  records.py    a stage as data, and the record a finished one leaves
  stages.py     the stage graph: teacher, defences, their k-means, the
                attacks; each stage a call of the library the `run/`
                scripts use, skipped when done with the same settings
  executors.py  where stages run: in this process, or as Ray tasks
  report.py     the paper's tables (paper, ours, difference) and figures

A package of its own because it sits above both `attacks` and `defenses`:
it drives them, and neither depends on it.
"""
