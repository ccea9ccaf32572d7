using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using Akka.Actor;
using Vmm.Core.Memory;
using Vmm.Core.Posix;
using Vmm.Host.Cli;
using Vmm.Virtio.Driver.Blk;
using Vmm.Virtio.Queues;
using Vmm.Virtio.Spec;
using Vmm.VhostUser.Frontend;

namespace Vmm.Host.Run;

/// <summary>
/// <c>vmm run --save/--restore</c> with the verify workload (docs/save-restore.md). The save
/// point lies between write requests: no new one is submitted, those in flight complete, then
/// every queue is stopped and the snapshot written. A restore rebuilds guest memory, places the
/// rings where they were, loads the device's state and starts each queue from its saved state,
/// then continues the writes from where they stopped, flushes, reads everything back and compares.
/// </summary>
public static class SaveRestoreRun
{
    /// <summary>SIGUSR1 on Linux (the BCL's PosixSignal takes raw numbers).</summary>
    private const int SIGUSR1 = 10;

    public static int Execute(RunOptions options, TextWriter output, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(output);
        SaveRestoreSettings settings = options.SaveRestore ?? throw new ArgumentException("No save/restore settings.", nameof(options));
        VmSnapshot? snapshot = settings.RestorePath is null ? null : SaveRestoreFile.Read(settings.RestorePath);
        GuestVmHooks? hooks = null;
        if (snapshot is not null)
        {
            options = FromSnapshot(options, snapshot);
            hooks = Hooks(snapshot);
        }

        using GuestVm vm = GuestVm.Start(options, hooks);
        GuestDevice device = vm.Devices[0];
        if (snapshot is not null && device.Driver.NegotiatedFeatures != snapshot.Devices[0].Features)
        {
            throw new UsageException(string.Create(
                CultureInfo.InvariantCulture,
                $"The device now negotiates features 0x{device.Driver.NegotiatedFeatures:x}, the snapshot's negotiated 0x{snapshot.Devices[0].Features:x}: it is not the same kind of device."));
        }

        var blk = new BlkGuest(device, vm.Memory, vm.Allocator);
        int requested = 0;
        using PosixSignalRegistration? signal = settings.SavePath is null
            ? null
            : PosixSignalRegistration.Create((PosixSignal)SIGUSR1, context =>
            {
                context.Cancel = true;
                Volatile.Write(ref requested, 1);
            });

        if (settings.SavePath is not null)
        {
            // Scripts wait for this line before they signal: SIGUSR1 earlier would end the process.
            Console.Error.WriteLine($"vmm: verify running; SIGUSR1 saves a snapshot to {settings.SavePath}.");
        }

        long resumeAt = snapshot?.Workload.Done ?? 0;
        if (snapshot is not null)
        {
            Console.Error.WriteLine($"vmm: restored from {settings.RestorePath}; verify resumes at request {resumeAt} of {snapshot.Workload.Total}.");
        }

        // The stop time runs from the moment the workload is told to stop until the file is written.
        var stopClock = new Stopwatch();
        using LiveSave? live = settings.Live ? new LiveSave(vm.Memory, Trackers(vm), settings) : null;
        long total = 2 * VerifyBlocks(vm, blk);
        Func<long, bool>? pause = settings.SavePath is null
            ? null
            : i =>
            {
                bool triggered = Volatile.Read(ref requested) != 0 || (settings.SaveAfter is { } n && i >= n);
                if (live is not null && triggered)
                {
                    // --live: the trigger starts the pre-copy; the workload stops once it converged.
                    live.Begin();
                }

                bool stop = live is null ? triggered : live.ShouldStop(i, total);
                if (stop && !stopClock.IsRunning)
                {
                    stopClock.Start();
                }

                return stop;
            };
        VerifyOutcome outcome = Verify(vm, blk, resumeAt, snapshot?.Workload.Total, pause, cancellationToken);
        if (outcome.Paused)
        {
            (long bytes, int pages) = Save(vm, settings.SavePath!, new WorkloadProgress(RunWorkload.Verify, outcome.Done, outcome.Total), live);
            Console.Error.WriteLine(live is not null
                ? live.Describe(stopClock.ElapsedMilliseconds)
                : string.Create(CultureInfo.InvariantCulture, $"vmm: save: stopped for {stopClock.ElapsedMilliseconds} ms, copying {pages} non-zero pages at the stop."));
            output.WriteLine(string.Create(
                CultureInfo.InvariantCulture,
                $"save: verify paused after {outcome.Done} of {outcome.Total} requests; snapshot {settings.SavePath} ({bytes} bytes)"));
        }
        else
        {
            output.WriteLine(outcome.Message);
        }

        output.Flush();
        return ExitCodes.Success;
    }

    /// <summary>The snapshot's machine shape wins over the command line's: the restore must build the VM the same way.</summary>
    internal static RunOptions FromSnapshot(RunOptions options, VmSnapshot snapshot)
    {
        if (snapshot.Devices.Count != options.Devices.Count)
        {
            throw new UsageException($"The snapshot holds {snapshot.Devices.Count} device(s); the command line gives {options.Devices.Count}.");
        }

        DeviceSnapshotRecord saved = snapshot.Devices[0];
        IDeviceSource source = options.Devices[0];
        if (saved.Kind != source.Kind || saved.DeviceId != (ushort)source.DeviceId)
        {
            throw new UsageException($"The snapshot's device is {saved.Kind} (id {saved.DeviceId}); the command line gives {source.Kind}.");
        }

        if (snapshot.Workload.Workload != RunWorkload.Verify)
        {
            throw new UsageException($"The snapshot paused workload {snapshot.Workload.Workload}; only verify can resume.");
        }

        MachineSnapshot m = snapshot.Machine;
        return options with
        {
            MemorySize = m.MemorySize,
            Transport = m.Pci ? Vmm.Virtio.Driver.VirtioTransportKind.Pci : Vmm.Virtio.Driver.VirtioTransportKind.Mmio,
            PackedRing = m.PackedRing,
            EventIndex = m.EventIndex,
            IndirectDescriptors = m.IndirectDescriptors,
            BlockSize = m.BlockSize,
            IoDepth = m.IoDepth,
        };
    }

    private static GuestVmHooks Hooks(VmSnapshot snapshot) => new()
    {
        PrepareMemory = memory =>
        {
            foreach (MemoryPage page in snapshot.Pages)
            {
                memory.Write(page.Address, page.Data);
            }
        },
        WrapDevice = (device, index, remote) => new RestoredDevice(device, snapshot.Devices[index], remote),
        QueueFactory = (memory, allocator) => new RestoringQueueFactory(memory, allocator, snapshot.Devices[0]),
    };

    private sealed record VerifyOutcome(bool Paused, long Done, long Total, string Message);

    /// <summary>
    /// Workloads.VerifyBlk as a sequence of 2 x count requests, the writes then (after a flush)
    /// the reads that compare, which can start anywhere in it and pause before any of them.
    /// </summary>
    private static VerifyOutcome Verify(GuestVm vm, BlkGuest blk, long resumeAt, long? expectedTotal, Func<long, bool>? pause, CancellationToken cancellationToken)
    {
        ulong region = Math.Min(Workloads.VerifyRegion, blk.CapacityBytes);
        int chunk = vm.Options.BlockSize;
        long count = VerifyBlocks(vm, blk);
        long total = 2 * count;
        if (expectedTotal is { } saved && saved != total)
        {
            throw new UsageException($"The snapshot's verify has {saved} requests; this disk needs {total}: it is not the same disk.");
        }

        BlkQueue queue = blk.Queues[0];
        int depth = Math.Max(1, Math.Min(vm.Options.IoDepth, queue.MaxRequests));
        GuestMemory memory = vm.Memory;
        ulong[] buffers = Workloads.AllocateBuffers(vm, depth, chunk);
        var stopwatch = Stopwatch.StartNew();
        uint Length(long i) => (uint)Math.Min((ulong)chunk, region - ((ulong)i * (ulong)chunk));
        Func<long, bool>? PauseAt(long first) => pause is null ? null : k => pause(first + k) || cancellationToken.IsCancellationRequested;

        // Requests 0 .. count-1: the writes.
        long writesFrom = Math.Min(resumeAt, count);
        long written = Workloads.RunInOrder(
            queue,
            depth,
            count - writesFrom,
            (k, slot, state) => Workloads.SubmitPatternWrite(queue, memory, buffers[slot], (ulong)(writesFrom + k) * (ulong)chunk, Length(writesFrom + k), state),
            (k, _, request) =>
            {
                if (!request.Succeeded)
                {
                    throw new WorkloadFailedException($"the device failed the write at byte {(ulong)(writesFrom + k) * (ulong)chunk} with status {request.Status}.");
                }
            },
            PauseAt(writesFrom));
        if (writesFrom + written < count)
        {
            Workloads.FreeBuffers(vm, buffers);
            return new VerifyOutcome(true, writesFrom + written, total, string.Empty);
        }

        // A flush before the reads (again after a restore that paused in the reads: harmless).
        Workloads.FlushIfNegotiated(blk, queue);

        // Requests count .. 2 count - 1: the reads, each compared with the pattern.
        long readsFrom = Math.Max(0, resumeAt - count);
        byte[] expected = new byte[chunk];
        long read = Workloads.RunInOrder(
            queue,
            depth,
            count - readsFrom,
            (k, slot, state) =>
            {
                long i = readsFrom + k;
                uint length = Length(i);
                memory.Clear(buffers[slot], length);
                return queue.TrySubmitRead((ulong)i * (ulong)chunk / VirtioBlk.SectorSize, buffers[slot], length, state);
            },
            (k, slot, request) => Workloads.CheckPatternRead(request, memory, buffers[slot], (ulong)(readsFrom + k) * (ulong)chunk, (int)Length(readsFrom + k), expected),
            PauseAt(count + readsFrom));
        Workloads.FreeBuffers(vm, buffers);
        if (readsFrom + read < count)
        {
            return new VerifyOutcome(true, count + readsFrom + read, total, string.Empty);
        }

        return new VerifyOutcome(false, total, total, string.Create(
            CultureInfo.InvariantCulture,
            $"verify: wrote, flushed, read back and compared {Workloads.Mib(region)} in {stopwatch.ElapsedMilliseconds} ms: equal{(expectedTotal is not null ? $" (resumed at request {resumeAt} of {total})" : string.Empty)}"));
    }

    /// <summary>The blocks verify writes and reads back: the first <see cref="Workloads.VerifyRegion"/> bytes of the disk in block-size requests.</summary>
    private static long VerifyBlocks(GuestVm vm, BlkGuest blk)
    {
        ulong region = Math.Min(Workloads.VerifyRegion, blk.CapacityBytes);
        ulong chunk = (ulong)vm.Options.BlockSize;
        return (long)((region + chunk - 1) / chunk);
    }

    /// <summary>Who writes guest memory: the VMM itself, and each vhost-user back-end through its dirty log.</summary>
    private static List<IDirtyPageTracking> Trackers(GuestVm vm) =>
        [vm.Memory, .. vm.Devices.Select(d => d.Remote).OfType<IDirtyPageTracking>()];

    /// <summary>
    /// Stops every queue, collects the device's and the VM's state and writes the file. Returns
    /// its size and the pages saved. With <paramref name="live"/>, memory is what the pre-copy
    /// gathered plus the pages written since (<see cref="LiveSave.Finish"/>).
    /// </summary>
    private static (long Bytes, int Pages) Save(GuestVm vm, string path, WorkloadProgress progress, LiveSave? live)
    {
        GuestDevice d = vm.Devices[0];
        var queues = new List<QueueRecord>();
        foreach (Vmm.Virtio.Driver.VirtioDriverQueue q in d.Driver.Queues)
        {
            VirtqueueState state = d.Device.StopQueue(q.Index)
                ?? throw new WorkloadFailedException($"queue {q.Index} was not running when the snapshot stopped it.");
            queues.Add(new QueueRecord(q.Queue.Params, state));
        }

        // After every ring stopped: a vhost-user back-end moves its state only when suspended.
        byte[] deviceState = d.Device.SaveState();
        InflightContents inflight = d.Remote?.ReadInflight() ?? new InflightContents([], 0, 0);
        var device = new DeviceSnapshotRecord(d.Source.Kind, (ushort)d.Device.DeviceId, d.Driver.NegotiatedFeatures, queues, deviceState, inflight.Contents)
        {
            InflightShape = (inflight.NumQueues, inflight.QueueSize),
        };
        var machine = new MachineSnapshot(
            vm.Options.MemorySize, vm.Options.Transport == Vmm.Virtio.Driver.VirtioTransportKind.Pci, vm.Options.PackedRing,
            vm.Options.EventIndex, vm.Options.IndirectDescriptors, vm.Options.BlockSize, vm.Options.IoDepth);
        List<MemoryPage> pages = live?.Finish(queues, vm.Options.PackedRing) ?? NonZeroPages(vm.Memory);
        SaveRestoreFile.Write(path, new VmSnapshot(machine, pages, [device], progress));
        return (new FileInfo(path).Length, pages.Count);
    }

    private static List<MemoryPage> NonZeroPages(GuestMemory memory)
    {
        var pages = new List<MemoryPage>();
        foreach (GuestMemoryRegion region in memory.Regions)
        {
            for (ulong at = 0; at + SaveRestoreFile.PageSize <= region.Size; at += SaveRestoreFile.PageSize)
            {
                ulong address = region.GuestPhysicalAddress + at;
                ReadOnlySpan<byte> page = memory.GetReadOnlySpan(address, SaveRestoreFile.PageSize);
                if (page.ContainsAnyExcept((byte)0))
                {
                    pages.Add(new MemoryPage(address, page.ToArray()));
                }
            }
        }

        return pages;
    }
}
