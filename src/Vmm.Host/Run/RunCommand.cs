using System.CommandLine;
using System.Runtime.InteropServices;
using Vmm.Host.Cli;
using Vmm.Host.Stats;
using Vmm.Virtio.Driver;
using Vmm.Virtio.Machine;

namespace Vmm.Host.Run;

/// <summary>
/// <c>vmm run</c>: builds a VM with the given devices, lets the guest driver initialise each one
/// and runs a workload on the guest side (docs/cli.md).
/// Results go to stdout; messages to stderr.
/// </summary>
public static class RunCommand
{
    /// <summary>Largest --block-size: one data buffer of a request.</summary>
    public const int MaxBlockSize = 16 << 20;

    public static Command Create() => Create(null);

    /// <summary>
    /// The command, with <paramref name="extraSources"/> called at invocation for devices that
    /// other options describe (each is one more <see cref="IDeviceSource"/>, attached after the <c>--device</c> ones).
    /// </summary>
    public static Command Create(Func<ParseResult, IEnumerable<IDeviceSource>>? extraSources)
    {
        var device = new Option<string[]>("--device")
        {
            Description = "An in-process device: blk,disk=FILE[,read-only][,queues=N][,queue-size=N] or rng. Repeatable.",
            Arity = ArgumentArity.OneOrMore,
            AllowMultipleArgumentsPerToken = false,
        };
        var vhostUser = new Option<string[]>("--vhost-user")
        {
            Description = "A vhost-user device: SOCKET,type=blk|rng|net|fs|console|gpio|vsock|...|device-id=N[,queues=N][,queue-size=N][,reconnect=on|off][,reconnect-max=N][,reconnect-max-delay=SECONDS][,wait=on|off][,tag=NAME (fs)]. Repeatable.",
            Arity = ArgumentArity.OneOrMore,
            AllowMultipleArgumentsPerToken = false,
        };
        var memory = new Option<string>("--memory", "-m") { Description = "Guest memory size (256M, 1G).", DefaultValueFactory = _ => "256M" };
        var transport = new Option<string>("--transport") { Description = "How devices sit on the bus: mmio or pci.", DefaultValueFactory = _ => "pci" };
        transport.AcceptOnlyFromAmong("mmio", "pci");
        var workload = new Option<string>("--workload") { Description = "verify, checksum, bench, probe, idle, fs, fs-verify or net.", DefaultValueFactory = _ => "verify" };
        workload.AcceptOnlyFromAmong("verify", "checksum", "bench", "probe", "idle", "fs", "fs-verify", "net");
        var frames = new Option<int>("--frames") { Description = "net: frames to send and expect back.", DefaultValueFactory = _ => 10_000 };
        var noMrgRxbuf = new Option<bool>("--no-mrg-rxbuf") { Description = "net: do not negotiate VIRTIO_NET_F_MRG_RXBUF." };
        var seconds = new Option<int>("--seconds") { Description = "bench: how long to run.", DefaultValueFactory = _ => 10 };
        var iodepth = new Option<int>("--iodepth") { Description = "Requests in flight (bench, verify).", DefaultValueFactory = _ => 32 };
        var blockSize = new Option<string>("--block-size") { Description = "Request size, a multiple of 512 (bench, verify).", DefaultValueFactory = _ => "4k" };
        var rw = new Option<string>("--rw") { Description = "bench: randread, randwrite, read, write or randrw.", DefaultValueFactory = _ => "randread" };
        rw.AcceptOnlyFromAmong("randread", "randwrite", "read", "write", "randrw");
        var json = new Option<bool>("--json") { Description = "bench: print one JSON object on stdout." };
        var stats = new Option<bool>("--stats") { Description = "Print per-queue figures on stderr each second (a live table on a terminal, key=value lines otherwise)." };
        var packed = new Option<bool>("--packed") { Description = "Use packed rings (VIRTIO_F_RING_PACKED)." };
        var noEventIdx = new Option<bool>("--no-event-idx") { Description = "Do not negotiate VIRTIO_F_EVENT_IDX." };
        var noIndirect = new Option<bool>("--no-indirect") { Description = "Do not negotiate VIRTIO_F_INDIRECT_DESC." };
        var interrupts = new Option<string>("--interrupts")
        {
            Description = "Interrupt delivery: function (through the interrupt controller actor), event (eventfds straight to the guest driver) or auto (event for vhost-user devices on pci, else function).",
            DefaultValueFactory = _ => "auto",
        };
        interrupts.AcceptOnlyFromAmong("auto", "function", "event");

        var command = new Command("run", "Start a VM with virtio devices and run a guest workload on them.")
        {
            vhostUser, device, memory, transport, workload, seconds, iodepth, blockSize, rw, json, packed, noEventIdx, noIndirect, interrupts,
            frames, noMrgRxbuf, stats,
        };

        SaveRestoreSettings.AddOptions(command);
        command.SetAction((result, cancellationToken) =>
        {
            var sources = new List<IDeviceSource>();
            foreach (string text in result.GetValue(device) ?? [])
            {
                sources.Add(new InProcessDeviceSource(DeviceSpec.Parse(text)));
            }

            string[] vhostUserTexts = result.GetValue(vhostUser) ?? [];
            for (int i = 0; i < vhostUserTexts.Length; i++)
            {
                VhostUserSpec spec = VhostUserSpec.Parse(vhostUserTexts[i]);
                sources.Add(new VhostUserDeviceSource(spec, $"{spec.Kind.Replace('=', '-')}{i}"));
            }

            if (extraSources is not null)
            {
                sources.AddRange(extraSources(result));
            }

            var options = new RunOptions
            {
                Devices = sources,
                MemorySize = SizeParser.Parse(result.GetValue(memory)!, "--memory"),
                Transport = result.GetValue(transport) == "mmio" ? VirtioTransportKind.Mmio : VirtioTransportKind.Pci,
                Delivery = ChooseDelivery(result.GetValue(interrupts)!, result.GetValue(transport) == "mmio", sources),
                Workload = Enum.Parse<RunWorkload>(result.GetValue(workload)!.Replace("-", string.Empty, StringComparison.Ordinal), ignoreCase: true),
                Seconds = result.GetValue(seconds),
                IoDepth = result.GetValue(iodepth),
                BlockSize = ParseBlockSize(result.GetValue(blockSize)!),
                Mix = Enum.Parse<ReadWriteMix>(result.GetValue(rw)!, ignoreCase: true),
                Json = result.GetValue(json),
                Stats = result.GetValue(stats),
                PackedRing = result.GetValue(packed),
                EventIndex = !result.GetValue(noEventIdx),
                IndirectDescriptors = !result.GetValue(noIndirect),
                Frames = result.GetValue(frames),
                MergeableRxBuffers = !result.GetValue(noMrgRxbuf),
            };
            options = SaveRestoreSettings.Apply(result, options);
            Validate(options);
            // stdout carries the workload's results and nothing else: whatever else writes to
            // Console.Out from here on (Akka's fallback logger, which prints there while the
            // loggers start or stop) goes to stderr.
            TextWriter results = Console.Out;
            Console.SetOut(Console.Error);

            // On a pool thread, so that the parser's SIGINT/SIGTERM handling can cancel the token and wait for a clean end.
            return Task.Run(() => Execute(options, results, cancellationToken), CancellationToken.None);
        });
        return command;
    }

    /// <summary>
    /// <c>auto</c>: event-backed lines when a vhost-user device sits on PCI (MSI-X), so that its
    /// back-end signals the guest's eventfd itself and no thread proxies its interrupts; otherwise
    /// function-backed, through the interrupt controller actor.
    /// </summary>
    internal static GuestInterruptDelivery ChooseDelivery(string choice, bool mmio, IReadOnlyList<IDeviceSource> sources) => choice switch
    {
        "event" => GuestInterruptDelivery.EventBacked,
        "function" => GuestInterruptDelivery.FunctionBacked,
        _ when !mmio && sources.Any(s => s is VhostUserDeviceSource) => GuestInterruptDelivery.EventBacked,
        _ => GuestInterruptDelivery.FunctionBacked,
    };

    internal static int ParseBlockSize(string text)
    {
        ulong size = SizeParser.Parse(text, "--block-size");
        if (size == 0 || size % 512 != 0 || size > MaxBlockSize)
        {
            throw new UsageException($"--block-size '{text}' must be a multiple of 512 bytes up to {MaxBlockSize >> 20}M.");
        }

        return (int)size;
    }

    internal static void Validate(RunOptions o)
    {
        if (o.Devices.Count == 0)
        {
            throw new UsageException("Give at least one device (--device blk,disk=FILE, --device rng or --vhost-user SOCKET,type=blk).");
        }

        if (o.Seconds is < 1 or > 86400)
        {
            throw new UsageException("--seconds must be from 1 to 86400.");
        }

        if (o.IoDepth is < 1 or > 4096)
        {
            throw new UsageException("--iodepth must be from 1 to 4096.");
        }

        bool hasBlk = o.Devices.Any(d => d.Kind == "blk");
        switch (o.Workload)
        {
            case RunWorkload.Checksum when !hasBlk:
                throw new UsageException("--workload checksum needs a blk device.");
            case RunWorkload.Bench when o.Devices.Count != 1 || o.Devices[0].Kind is not ("blk" or "fs" or "net"):
                throw new UsageException("--workload bench runs on exactly one blk, fs or net device.");
            case RunWorkload.Fs or RunWorkload.FsVerify when o.Devices.Count(d => d.Kind == "fs") != 1:
                throw new UsageException($"--workload {(o.Workload == RunWorkload.Fs ? "fs" : "fs-verify")} runs on exactly one fs device (--vhost-user SOCKET,type=fs).");
            case RunWorkload.Net when o.Devices.Count(d => d.Kind == "net") != 1:
                throw new UsageException("--workload net runs on exactly one net device (--vhost-user SOCKET,type=net).");
            case RunWorkload.Net when o.Frames is < 1 or > 100_000_000:
                throw new UsageException("--frames must be from 1 to 100000000.");
            case RunWorkload.Verify when o.Devices.FirstOrDefault(d => d.Kind is not ("blk" or "rng")) is { } other:
                throw new UsageException($"--workload verify works on blk and rng devices, not {other.Kind}; use --workload probe.");
        }

        if (o.Transport == VirtioTransportKind.Mmio && o.Devices.Count > VirtioMachineLayout.MmioSlots)
        {
            throw new UsageException($"At most {VirtioMachineLayout.MmioSlots} devices fit on virtio-mmio.");
        }
    }

    /// <summary>Builds the VM, runs the workload, shuts down. Returns the exit code; user errors throw (see Program).</summary>
    public static int Execute(RunOptions options, TextWriter output, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(output);
        using StatsTable? table = options.Stats ? StatsTable.Start() : null;
        if (options.SaveRestore is not null)
        {
            return SaveRestoreRun.Execute(options, output, cancellationToken);
        }

        using GuestVm vm = GuestVm.Start(options);
        switch (options.Workload)
        {
            case RunWorkload.Verify:
                foreach (GuestDevice d in vm.Devices)
                {
                    output.WriteLine(vm.RunWithResets(d, "verify", g => g.Source.Kind == "blk"
                        ? Workloads.VerifyBlk(vm, new BlkGuest(g, vm.Memory, vm.Allocator))
                        : Workloads.VerifyRng(vm, g)));
                }

                break;

            case RunWorkload.Checksum:
                foreach (GuestDevice d in vm.Devices.Where(d => d.Source.Kind == "blk"))
                {
                    output.WriteLine(vm.RunWithResets(d, "checksum", g => Workloads.ChecksumBlk(vm, new BlkGuest(g, vm.Memory, vm.Allocator))));
                }

                break;

            case RunWorkload.Bench when vm.Devices[0].Source.Kind == "blk":
                BenchResult? result = null;
                vm.RunWithResets(vm.Devices[0], "bench", g =>
                {
                    result = BenchWorkload.RunWithProgress(vm, new BlkGuest(g, vm.Memory, vm.Allocator), cancellationToken);
                    return string.Empty;
                });
                BenchWorkload.Write(output, options, result!);
                break;

            case RunWorkload.Bench or RunWorkload.Fs or RunWorkload.FsVerify or RunWorkload.Net:
                DeviceWorkloads.Run(vm, output, Console.Error, cancellationToken);
                break;

            case RunWorkload.Probe:
                foreach (GuestDevice d in vm.Devices)
                {
                    output.WriteLine(ProbeWorkload.Describe(vm, d));
                }

                break;

            case RunWorkload.Idle:
                Idle(vm, cancellationToken);
                break;
        }

        output.Flush();
        return ExitCodes.Success;
    }

    private static void Idle(GuestVm vm, CancellationToken cancellationToken)
    {
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        using (PosixSignalRegistration.Create(PosixSignal.SIGTERM, context => { context.Cancel = true; stop.Cancel(); }))
        using (PosixSignalRegistration.Create(PosixSignal.SIGINT, context => { context.Cancel = true; stop.Cancel(); }))
        {
            Console.Error.WriteLine(
                $"vmm: {vm.Devices.Count} device(s) running ({string.Join(", ", vm.Devices.Select(d => d.Source.Kind))}); waiting for SIGINT or SIGTERM.");
            stop.Token.WaitHandle.WaitOne();
            Console.Error.WriteLine("vmm: stopping.");
        }
    }
}
