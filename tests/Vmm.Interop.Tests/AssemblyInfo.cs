// One QEMU guest at a time: TCG needs the CPUs, and every test owns its back-end.
[assembly: NonParallelizable]
[assembly: LevelOfParallelism(1)]
