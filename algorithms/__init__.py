"""The one PPO core: config, actor-critic, rollout record, GAE, update, evaluation.

Nothing here imports Ray or knows how rollouts were sampled; backends hand in a
`Rollout` and receive weights as one flat float32 buffer.
"""
