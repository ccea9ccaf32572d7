using System.CommandLine;
using System.Runtime.InteropServices;
using Microsoft.Extensions.Logging;
using Vmm.Core.Memory;
using Vmm.Host.Cli;
using Vmm.Host.Stats;
using Vmm.Virtio;
using Vmm.Virtio.Devices.Blk;
using Vmm.Virtio.Devices.Rng;
using Vmm.VhostUser.Backend;

namespace Vmm.Host.Serve;

/// <summary>
/// <c>vmm serve blk|rng</c>: a vhost-user back-end in the foreground. Logs to stderr; SIGINT or
/// SIGTERM stop it cleanly and remove the socket file.
/// </summary>
public static class ServeCommand
{
    public static Command Create()
    {
        var socket = new Option<string>("--socket") { Description = "Path of the vhost-user socket to listen on.", Required = true };
        var disk = new Option<string>("--disk") { Description = "Disk image file.", Required = true };
        var readOnly = new Option<bool>("--read-only") { Description = "Export the disk read-only." };
        var queues = new Option<int>("--queues") { Description = "Number of request queues (1 to 64).", DefaultValueFactory = _ => 1 };
        var queueSize = new Option<int>("--queue-size") { Description = "Largest queue size offered (2 to 32768).", DefaultValueFactory = _ => 256 };
        var cache = new Option<string>("--cache")
        {
            Description = "none: O_DIRECT, no host page cache; writeback: through the page cache; unsafe: as writeback, flushes ignored.",
            DefaultValueFactory = _ => "writeback",
        };
        var aio = new Option<string>("--aio")
        {
            Description = "How I/O is carried out: auto (inline for an image in RAM, io_uring with --cache none, else threads), io_uring, threads or inline.",
            DefaultValueFactory = _ => "auto",
        };
        var verbose = new Option<bool>("--verbose", "-v") { Description = "Log every ring start and stop." };
        Option<bool> stats = StatsOption();
        Option<UnsealedMemoryPolicy> memory = MemoryOption();

        // Test only (docs/migration.md): offers LOG_ALL but marks nothing, so the live-migration
        // test can show that it catches a back-end that does not log.
        var ignoreDirtyLog = new Option<bool>("--test-ignore-dirty-log") { Hidden = true };

        var blk = new Command("blk", "Serve a virtio-blk device backed by a disk image or a block device.")
        {
            socket, disk, readOnly, queues, queueSize, cache, aio, verbose, memory, stats, ignoreDirtyLog,
        };
        blk.SetAction((result, ct) =>
        {
            string path = result.GetValue(disk)!;
            int queueCount = result.GetValue(queues);
            int size = result.GetValue(queueSize);
            if (queueCount is < 1 or > 64)
            {
                throw new UsageException("--queues must be from 1 to 64.");
            }

            if (size is < 2 or > 32768)
            {
                throw new UsageException("--queue-size must be from 2 to 32768.");
            }

            if (!File.Exists(path))
            {
                throw new UsageException($"Disk image '{path}' does not exist.");
            }

            var options = new VirtioBlkOptions(path, result.GetValue(readOnly), queueCount, (ushort)size)
            {
                Cache = BlkStorageOptions.ParseCache(result.GetValue(cache), "--cache"),
                Aio = BlkStorageOptions.ParseAio(result.GetValue(aio), "--aio"),
            };
            return ServeAsync(
                () => new VirtioBlkDevice(options),
                result.GetValue(socket)!,
                result.GetValue(verbose),
                new VhostUserBackendOptions { UnsealedMemory = result.GetValue(memory), TestIgnoreDirtyLog = result.GetValue(ignoreDirtyLog) },
                result.GetValue(stats),
                ct);
        });

        var rngSocket = new Option<string>("--socket") { Description = "Path of the vhost-user socket to listen on.", Required = true };
        var rngVerbose = new Option<bool>("--verbose", "-v") { Description = "Log every ring start and stop." };
        Option<UnsealedMemoryPolicy> rngMemory = MemoryOption();
        Option<bool> rngStats = StatsOption();
        var rng = new Command("rng", "Serve a virtio-rng (entropy) device.") { rngSocket, rngVerbose, rngMemory, rngStats };
        rng.SetAction((result, ct) => ServeAsync(
            () => new VirtioRngDevice(), result.GetValue(rngSocket)!, result.GetValue(rngVerbose), new VhostUserBackendOptions { UnsealedMemory = result.GetValue(rngMemory) }, result.GetValue(rngStats), ct));

        return new Command("serve", "Serve a virtio device as a vhost-user back-end.") { blk, rng };
    }

    /// <summary><c>--stats</c>: per-queue figures on stderr each second (<see cref="StatsTable"/>).</summary>
    private static Option<bool> StatsOption() => new("--stats")
    {
        Description = "Print per-queue figures on stderr each second (a live table on a terminal, key=value lines otherwise).",
    };

    /// <summary><c>--memory guard|strict</c>: what to do with front-end memory that is not sealed against shrinking.</summary>
    private static Option<UnsealedMemoryPolicy> MemoryOption() => new("--memory")
    {
        Description = "Front-end memory that can still shrink (memory-backend-file on /dev/shm or hugetlbfs): " +
            "'guard' maps it under a SIGBUS guard (a truncation costs only that front-end's connection), " +
            "'strict' refuses it (only sealed memfds are mapped).",
        DefaultValueFactory = _ => UnsealedMemoryPolicy.Guard,
        CustomParser = result => result.Tokens.Single().Value switch
        {
            "guard" => UnsealedMemoryPolicy.Guard,
            "strict" => UnsealedMemoryPolicy.Refuse,
            string other => Invalid(result, other),
        },
    };

    private static UnsealedMemoryPolicy Invalid(System.CommandLine.Parsing.ArgumentResult result, string value)
    {
        result.AddError($"--memory must be 'guard' or 'strict', not '{value}'.");
        return default;
    }

    private static async Task<int> ServeAsync(Func<IVirtioDevice> createDevice, string socketPath, bool verbose, VhostUserBackendOptions backendOptions, bool stats, CancellationToken cancellationToken)
    {
        using ILoggerFactory loggers = StderrLogging.Create(verbose ? LogLevel.Debug : LogLevel.Information);
        ILogger logger = loggers.CreateLogger("vmm.serve");
        using var lastChance = new LastChanceHandlers(logger);
        IVirtioDevice device;
        try
        {
            device = createDevice();
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException)
        {
            throw new UsageException($"Cannot open the device: {e.Message}", e);
        }

        // Signals (ours, and System.CommandLine's through the token) only record that a stop was
        // asked for; the stop itself, cancelling the server with whatever callbacks that runs,
        // happens below on this flow. A signal handler that cancelled by itself could meet a
        // source already disposed by a stop under way, or a callback's exception, on the
        // runtime's signal thread, where either ends the process. Signals are caught before the
        // socket exists: a SIGTERM that arrives as soon as the socket appears must still stop
        // the server cleanly and remove the file.
        var stopRequested = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        using CancellationTokenRegistration external = cancellationToken.Register(() => stopRequested.TrySetResult());
        using PosixSignalRegistration term = PosixSignalRegistration.Create(PosixSignal.SIGTERM, context => { context.Cancel = true; stopRequested.TrySetResult(); });
        using PosixSignalRegistration interrupt = PosixSignalRegistration.Create(PosixSignal.SIGINT, context => { context.Cancel = true; stopRequested.TrySetResult(); });
        using (device)
        {
            VhostUserBackendServer server;
            try
            {
                server = VhostUserBackendServer.Bind(device, socketPath, logger, backendOptions);
            }
            catch (IOException e)
            {
                throw new UsageException($"Cannot listen on '{socketPath}': {e.Message}", e);
            }

            using (server)
            using (var stop = new CancellationTokenSource())
            {
                logger.LogInformation("Serving {Device} on {Socket}", device.DeviceId, server.SocketPath);
                if (device is VirtioBlkDevice blkDevice)
                {
                    logger.LogInformation("Disk {Disk}", BlkStorageOptions.Describe(blkDevice));
                }

                using StatsTable? table = stats ? StatsTable.Start() : null;
                Task serving = server.RunAsync(stop.Token);
                await Task.WhenAny(serving, stopRequested.Task).ConfigureAwait(false);
                try
                {
                    await stop.CancelAsync().ConfigureAwait(false);
                }
                catch (AggregateException e)
                {
                    logger.LogWarning("Stopping the server raised {Reason}", e.InnerException?.Message ?? e.Message);
                }

                await serving.ConfigureAwait(false);
                logger.LogInformation("Stopped; removing {Socket}", server.SocketPath);
            }
        }

        return ExitCodes.Success;
    }
}
