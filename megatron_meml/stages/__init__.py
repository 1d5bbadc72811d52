"""The MEML training stages, over one API (``run.py``: setup -> run_all -> finish).

  ``common.py``     what the stages share: the Run, dataset splits and RIEL's question pool, the engine on the
                    training weights, the RIEL optimizer step, the reference policy, the progress bar
  ``mef.py``        stage 1, multi-expert fine-tuning on teacher traces
  ``riel_core.py``  the RIEL step core: train, metrics, held-out evaluation, checkpoint, summary
  ``riel.py``       stage 2, synchronous RIEL: the scheduler generates, the core trains
  ``riel_async.py`` stage 2, one-step-off RIEL: rollout ranks generate (``async_link.py``, ``async_bridge.py``)
  ``evaluate.py``   held-out evaluation of the experts and their ensemble
"""
