"""What a run costs on this machine: memory estimates (memory), time estimates (estimate), CPU threads (threads)."""
