"""Model runners behind small interfaces, one shared runtime per process.

Runners load once, set their thread counts and execution providers explicitly, and expose a
thin call on arrays. `models.runtime.InferenceScheduler` puts every call's requests for one
model through one priority queue, so all live calls share the model fairly.
"""
