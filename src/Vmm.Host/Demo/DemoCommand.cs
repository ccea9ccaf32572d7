using System.CommandLine;
using System.Globalization;
using Spectre.Console;
using Vmm.Host.Cli;
using Vmm.Host.Run;
using Vmm.Virtio.Driver;
using Vmm.Virtio.Machine;
using Vmm.VhostUser.Frontend;

namespace Vmm.Host.Demo;

/// <summary>
/// <c>vmm demo</c>: the main job with nothing to set up. A RAM-backed disk image, our own
/// vhost-user back-end (<c>vmm serve blk</c>) on it in a child process, and the front-end here
/// running <c>verify</c> and two short benches through the guest driver; then a results table.
/// The child, the image and the socket are removed at the end, also after a failure or Ctrl-C.
/// </summary>
public static class DemoCommand
{
    /// <summary>Size of the demo's disk image.</summary>
    public const long ImageSize = 64L << 20;

    /// <summary>Exit code after SIGINT or SIGTERM (128 + SIGINT, as shells report it).</summary>
    public const int Interrupted = 130;

    public static Command Create()
    {
        var seconds = new Option<int>("--seconds") { Description = "How long each bench runs.", DefaultValueFactory = _ => 3 };
        var command = new Command(
            "demo",
            "Serve a RAM-backed disk over vhost-user in a child process, verify it and bench it through the vhost-user front-end, print the results.")
        {
            seconds,
        };
        command.SetAction((result, cancellationToken) =>
        {
            int s = result.GetValue(seconds);
            if (s is < 1 or > 600)
            {
                throw new UsageException("--seconds must be from 1 to 600.");
            }

            // On a pool thread, so that the parser's SIGINT/SIGTERM handling can cancel the token and wait for the clean-up.
            return Task.Run(() => Execute(s, cancellationToken), CancellationToken.None);
        });
        return command;
    }

    public static int Execute(int benchSeconds, CancellationToken cancellationToken)
    {
        using DemoBackend backend = DemoBackend.Start(ImageSize, cancellationToken);
        var rows = new List<Row>();
        string features = "";
        string protocol = "";
        int exitCode = ExitCodes.Success;
        try
        {
            Phase[] phases =
            [
                new("verify", RunWorkload.Verify, ReadWriteMix.RandRead, 64 * 1024),
                new("randread 4k qd32", RunWorkload.Bench, ReadWriteMix.RandRead, 4096),
                new("randwrite 4k qd32", RunWorkload.Bench, ReadWriteMix.RandWrite, 4096),
            ];
            foreach (Phase phase in phases)
            {
                if (cancellationToken.IsCancellationRequested)
                {
                    break;
                }

                var spec = new VhostUserSpec(backend.SocketPath, Vmm.Virtio.Spec.VirtioDeviceId.Block, null, 256, Reconnect: false, ReconnectMax: null);
                var options = new RunOptions
                {
                    Devices = [new VhostUserDeviceSource(spec, "blk0")],
                    MemorySize = 256UL << 20,
                    Transport = VirtioTransportKind.Pci,
                    Delivery = GuestInterruptDelivery.EventBacked,
                    Workload = phase.Workload,
                    Seconds = benchSeconds,
                    IoDepth = 32,
                    BlockSize = phase.BlockSize,
                    Mix = phase.Mix,
                };
                using GuestVm vm = GuestVm.Start(options);
                GuestDevice device = vm.Devices[0];
                var blk = new BlkGuest(device, vm.Memory, vm.Allocator);
                features = $"0x{device.Driver.NegotiatedFeatures:x} {FeatureNames.Describe(device.Driver.NegotiatedFeatures, device.Location.DeviceId)}";
                protocol = device.Remote is { } remote ? $"0x{(ulong)remote.Info.ProtocolFeatures:x} ({remote.Info.ProtocolFeatures})" : "";
                if (phase.Workload == RunWorkload.Verify)
                {
                    try
                    {
                        string verdict = Workloads.VerifyBlk(vm, blk);
                        rows.Add(new Row(phase.Name, verdict.EndsWith("equal", StringComparison.Ordinal) ? $"equal ({Trim(verdict)})" : verdict, null));
                    }
                    catch (WorkloadFailedException e)
                    {
                        rows.Add(new Row(phase.Name, "FAILED: " + e.Message, null));
                        exitCode = ExitCodes.WorkloadFailed;
                        break;
                    }
                }
                else
                {
                    BenchResult r = BenchWorkload.RunWithProgress(vm, blk, cancellationToken);
                    rows.Add(new Row(phase.Name, r.Errors == 0 ? $"{r.Ios:N0} requests" : $"{r.Errors:N0} errors", r));
                    if (r.Errors != 0)
                    {
                        exitCode = ExitCodes.WorkloadFailed;
                    }
                }
            }
        }
        finally
        {
            backend.Stop();
        }

        Print(rows, backend, features, protocol);
        if (cancellationToken.IsCancellationRequested)
        {
            Console.Error.WriteLine("vmm: demo interrupted; the back-end was stopped and its image removed.");
            return Interrupted;
        }

        return exitCode;
    }

    private static string Trim(string verdict)
    {
        // "verify: wrote, flushed, read back and compared 64 MiB in 427 ms: equal" -> "64 MiB in 427 ms"
        int from = verdict.IndexOf("compared ", StringComparison.Ordinal);
        int to = verdict.LastIndexOf(':');
        return from >= 0 && to > from ? verdict[(from + "compared ".Length)..to] : verdict;
    }

    private static void Print(List<Row> rows, DemoBackend backend, string features, string protocol)
    {
        CultureInfo c = CultureInfo.InvariantCulture;
        var table = new Table().Title("vmm demo: virtio-blk over vhost-user (vmm serve blk in a child process)");
        table.AddColumn("step");
        table.AddColumn("result");
        table.AddColumn(new TableColumn("IOPS").RightAligned());
        table.AddColumn(new TableColumn("MiB/s").RightAligned());
        table.AddColumn(new TableColumn("p50 µs").RightAligned());
        table.AddColumn(new TableColumn("p99 µs").RightAligned());
        foreach (Row row in rows)
        {
            BenchResult? r = row.Bench;
            table.AddRow(
                Markup.Escape(row.Name),
                Markup.Escape(row.Result),
                r is null ? "" : r.Iops.ToString("N0", c),
                r is null ? "" : r.MibPerSecond.ToString("0.0", c),
                r is null ? "" : r.P50Microseconds.ToString("0.0", c),
                r is null ? "" : r.P99Microseconds.ToString("0.0", c));
        }

        if (Console.IsOutputRedirected)
        {
            // Not a terminal: no width to fit, so do not wrap the table at Spectre's default of 80.
            AnsiConsole.Profile.Width = 160;
        }

        AnsiConsole.Write(table);
        TextWriter o = Console.Out;
        o.WriteLine($"image          {backend.ImagePath} ({ImageSize >> 20} MiB, removed)");
        o.WriteLine($"back-end       vmm serve blk, pid {backend.ProcessId}, socket {backend.SocketPath}");
        o.WriteLine($"features       {features}");
        o.WriteLine($"protocol       {protocol}");
        o.WriteLine("interrupts     event-backed: the back-end signals the guest driver's eventfds directly (pci, MSI-X)");
    }

    private sealed record Phase(string Name, RunWorkload Workload, ReadWriteMix Mix, int BlockSize);

    private sealed record Row(string Name, string Result, BenchResult? Bench);
}
