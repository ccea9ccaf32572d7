using System.Diagnostics;
using System.Globalization;
using System.Runtime.CompilerServices;
using Spectre.Console;
using Vmm.Host.Cli;
using Vmm.Virtio.Driver.Blk;
using Vmm.Virtio.Spec;

namespace Vmm.Host.Run;

/// <summary>What one <c>bench</c> run measured.</summary>
public sealed record BenchResult(int IoDepth, int Queues, long Ios, long Errors, double Seconds, double Iops, double MibPerSecond, double P50Microseconds, double P99Microseconds);

/// <summary>
/// Timed I/O through the guest driver: one thread per request queue keeps its share of the
/// iodepth in flight, resubmitting each slot as it completes; latency is submit-to-reap per
/// request (Stopwatch timestamps into a fixed histogram).
/// </summary>
public static class BenchWorkload
{
    public static BenchResult Run(GuestVm vm, BlkGuest blk, Action<double>? progress = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(vm);
        ArgumentNullException.ThrowIfNull(blk);
        RunOptions o = vm.Options;
        ulong blocks = blk.CapacityBytes / (ulong)o.BlockSize;
        if (blocks == 0)
        {
            throw new UsageException($"The disk ({blk.CapacityBytes} bytes) is smaller than one block of {o.BlockSize} bytes.");
        }

        bool writes = o.Mix is ReadWriteMix.RandWrite or ReadWriteMix.Write or ReadWriteMix.RandRw;
        if (writes && blk.ReadOnly)
        {
            throw new UsageException($"--rw {RunOptions.Name(o.Mix)} writes, and the disk is read-only.");
        }

        int queues = Math.Min(blk.Queues.Count, o.IoDepth);
        var workers = new QueueWorker[queues];
        for (int q = 0; q < queues; q++)
        {
            int depth = (o.IoDepth / queues) + (q < o.IoDepth % queues ? 1 : 0);
            depth = Math.Min(depth, blk.Queues[q].MaxRequests);
            ulong[] buffers = Workloads.AllocateBuffers(vm, depth, o.BlockSize);
            for (int i = 0; i < depth; i++)
            {
                VerifyPattern.Fill(vm.Memory.GetSpan(buffers[i], o.BlockSize), (ulong)i * (ulong)o.BlockSize);
            }

            // Sequential streams start at different places so queues do not read the same blocks.
            workers[q] = new QueueWorker(blk.Queues[q], buffers, o.BlockSize, blocks, o.Mix, (ulong)q * (blocks / (ulong)queues), seed: 0x5eed + q);
        }

        long duration = (long)(o.Seconds * (double)Stopwatch.Frequency);
        long start = Stopwatch.GetTimestamp();
        var end = new StrongBox<long>(start + duration);

        // Ctrl-C or SIGTERM ends the run early; what was measured until then is still reported.
        using CancellationTokenRegistration stopEarly = cancellationToken.Register(() => Volatile.Write(ref end.Value, 0));
        var threads = workers.Select((w, q) => new Thread(() => w.Run(end)) { IsBackground = true, Name = $"bench q{q}" }).ToArray();
        foreach (Thread t in threads)
        {
            t.Start();
        }

        foreach (Thread t in threads)
        {
            while (!t.Join(100))
            {
                progress?.Invoke(Math.Min(1.0, (Stopwatch.GetTimestamp() - start) / (double)duration));
            }
        }

        progress?.Invoke(1.0);
        double seconds = (Stopwatch.GetTimestamp() - start) / (double)Stopwatch.Frequency;
        foreach (QueueWorker w in workers)
        {
            if (w.Failure is not null)
            {
                throw w.Failure;
            }

            Workloads.FreeBuffers(vm, w.Buffers);
        }

        var latency = new LatencyHistogram();
        long errors = 0;
        foreach (QueueWorker w in workers)
        {
            latency.Add(w.Latency);
            errors += w.Errors;
        }

        long ios = latency.Count;
        double measured = workers.Max(w => w.MeasuredSeconds);
        double iops = measured > 0 ? ios / measured : 0;
        return new BenchResult(
            workers.Sum(w => w.Buffers.Length),
            queues,
            ios,
            errors,
            Math.Round(seconds, 3),
            Math.Round(iops, 1),
            Math.Round(iops * o.BlockSize / (1 << 20), 2),
            Math.Round(latency.Percentile(50) / 1000.0, 1),
            Math.Round(latency.Percentile(99) / 1000.0, 1));
    }

    /// <summary>Runs the bench with a progress bar when stdout is a terminal and the output is not JSON.</summary>
    public static BenchResult RunWithProgress(GuestVm vm, BlkGuest blk, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(vm);
        if (vm.Options.Json || vm.Options.Stats || Console.IsOutputRedirected)
        {
            return Run(vm, blk, null, cancellationToken);
        }

        BenchResult? result = null;
        AnsiConsole.Progress()
            .AutoClear(true)
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new ElapsedTimeColumn())
            .Start(context =>
            {
                ProgressTask task = context.AddTask($"{RunOptions.Name(vm.Options.Mix)} {vm.Options.BlockSize / 1024.0:0.#}k depth {vm.Options.IoDepth}", maxValue: 1.0);
                result = Run(vm, blk, fraction => task.Value = fraction, cancellationToken);
            });
        return result!;
    }

    public static void Write(TextWriter output, RunOptions options, BenchResult r)
    {
        ArgumentNullException.ThrowIfNull(output);
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(r);
        if (options.Json)
        {
            BenchJson.WriteLine(output, options, "blk", json =>
            {
                json.WriteNumber("iops", r.Iops);
                json.WriteNumber("mib_s", r.MibPerSecond);
                json.WriteNumber("p50_us", r.P50Microseconds);
                json.WriteNumber("p99_us", r.P99Microseconds);
                json.WriteNumber("errors", r.Errors);
                json.WriteNumber("ios", r.Ios);
                json.WriteString("rw", RunOptions.Name(options.Mix));
                json.WriteNumber("block_size", options.BlockSize);
                json.WriteNumber("iodepth", r.IoDepth);
                json.WriteNumber("queues", r.Queues);
                json.WriteNumber("seconds", r.Seconds);
            });
            return;
        }

        output.WriteLine(string.Create(
            CultureInfo.InvariantCulture,
            $"bench: {RunOptions.Name(options.Mix)} bs={options.BlockSize} iodepth={r.IoDepth} queues={r.Queues} transport={RunOptions.Name(options.Transport)} ring={(options.PackedRing ? "packed" : "split")} for {r.Seconds:0.###} s"));
        output.WriteLine(string.Create(
            CultureInfo.InvariantCulture,
            $"  IOPS {r.Iops:N0}  MiB/s {r.MibPerSecond:0.00}  latency p50 {r.P50Microseconds:0.0} µs  p99 {r.P99Microseconds:0.0} µs  ios {r.Ios:N0}  errors {r.Errors}"));
    }

    /// <summary>One queue's share of the bench, on its own thread.</summary>
    private sealed class QueueWorker
    {
        private readonly BlkQueue _queue;
        private readonly int _blockSize;
        private readonly ulong _blocks;
        private readonly ReadWriteMix _mix;
        private readonly Slot[] _slots;
        private ulong _sequential;
        private ulong _random;

        public QueueWorker(BlkQueue queue, ulong[] buffers, int blockSize, ulong blocks, ReadWriteMix mix, ulong firstBlock, int seed)
        {
            _queue = queue;
            Buffers = buffers;
            _blockSize = blockSize;
            _blocks = blocks;
            _mix = mix;
            _sequential = firstBlock % blocks;
            _random = (ulong)seed * 0x9E3779B97F4A7C15 | 1;
            _slots = [.. buffers.Select(b => new Slot(b))];
        }

        public ulong[] Buffers { get; }

        public LatencyHistogram Latency { get; } = new();

        public long Errors { get; private set; }

        public double MeasuredSeconds { get; private set; }

        public Exception? Failure { get; private set; }

        public void Run(StrongBox<long> end)
        {
            try
            {
                long start = Stopwatch.GetTimestamp();
                foreach (Slot slot in _slots)
                {
                    Submit(slot);
                }

                _queue.Kick();
                double nanosPerTick = 1e9 / Stopwatch.Frequency;
                bool stopping = false;
                while (_queue.InFlight > 0)
                {
                    VirtioBlkRequest? request = _queue.WaitForCompletion(Workloads.RequestTimeout)
                        ?? throw new WorkloadFailedException($"The device did not complete a request on queue {_queue.Index} within {Workloads.RequestTimeout.TotalSeconds:0} s.");
                    bool resubmitted = false;
                    while (request is not null)
                    {
                        long now = Stopwatch.GetTimestamp();
                        var slot = (Slot)request.State!;
                        Latency.Record((long)((now - slot.SubmittedAt) * nanosPerTick));
                        if (!request.Succeeded)
                        {
                            Errors++;
                        }

                        if (!stopping && now >= Volatile.Read(ref end.Value))
                        {
                            stopping = true;
                            MeasuredSeconds = (now - start) / (double)Stopwatch.Frequency;
                        }

                        if (!stopping)
                        {
                            Submit(slot);
                            resubmitted = true;
                        }

                        request = _queue.TryComplete();
                    }

                    if (resubmitted)
                    {
                        _queue.Kick();
                    }
                }
            }
            catch (Exception e)
            {
                Failure = e;
            }
        }

        private void Submit(Slot slot)
        {
            bool write = _mix switch
            {
                ReadWriteMix.RandWrite or ReadWriteMix.Write => true,
                ReadWriteMix.RandRw => (Next() & 1) != 0,
                _ => false,
            };
            ulong block;
            if (_mix is ReadWriteMix.Read or ReadWriteMix.Write)
            {
                block = _sequential;
                _sequential = (_sequential + 1) % _blocks;
            }
            else
            {
                block = Next() % _blocks;
            }

            ulong sector = block * (ulong)_blockSize / VirtioBlk.SectorSize;
            slot.SubmittedAt = Stopwatch.GetTimestamp();
            VirtioBlkRequest? request = write
                ? _queue.TrySubmitWrite(sector, slot.Buffer, (uint)_blockSize, slot)
                : _queue.TrySubmitRead(sector, slot.Buffer, (uint)_blockSize, slot);
            if (request is null)
            {
                throw new UsageException($"Queue {_queue.Index} (size {_queue.Size}) has no room for iodepth {_slots.Length}; lower --iodepth.");
            }
        }

        private ulong Next()
        {
            // xorshift64*: cheap, allocation-free, good enough to scatter offsets.
            ulong x = _random;
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            _random = x;
            return x * 0x2545F4914F6CDD1D;
        }
    }

    private sealed class Slot(ulong buffer)
    {
        public ulong Buffer { get; } = buffer;

        public long SubmittedAt { get; set; }
    }
}
