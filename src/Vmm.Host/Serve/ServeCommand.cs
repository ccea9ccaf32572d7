using System.CommandLine;
using System.Runtime.InteropServices;
using Microsoft.Extensions.Logging;
using Vmm.Host.Cli;
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

        var blk = new Command("blk", "Serve a virtio-blk device backed by a disk image or a block device.")
        {
            socket, disk, readOnly, queues, queueSize, cache, aio, verbose,
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
                ct);
        });

        var rngSocket = new Option<string>("--socket") { Description = "Path of the vhost-user socket to listen on.", Required = true };
        var rngVerbose = new Option<bool>("--verbose", "-v") { Description = "Log every ring start and stop." };
        var rng = new Command("rng", "Serve a virtio-rng (entropy) device.") { rngSocket, rngVerbose };
        rng.SetAction((result, ct) => ServeAsync(() => new VirtioRngDevice(), result.GetValue(rngSocket)!, result.GetValue(rngVerbose), ct));

        return new Command("serve", "Serve a virtio device as a vhost-user back-end.") { blk, rng };
    }

    private static async Task<int> ServeAsync(Func<IVirtioDevice> createDevice, string socketPath, bool verbose, CancellationToken cancellationToken)
    {
        using ILoggerFactory loggers = StderrLogging.Create(verbose ? LogLevel.Debug : LogLevel.Information);
        ILogger logger = loggers.CreateLogger("vmm.serve");
        IVirtioDevice device;
        try
        {
            device = createDevice();
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException)
        {
            throw new UsageException($"Cannot open the device: {e.Message}", e);
        }

        // Signals are caught before the socket exists: a SIGTERM that arrives as soon as the
        // socket appears must still stop the server cleanly and remove the file.
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        using PosixSignalRegistration term = PosixSignalRegistration.Create(PosixSignal.SIGTERM, context => { context.Cancel = true; stop.Cancel(); });
        using PosixSignalRegistration interrupt = PosixSignalRegistration.Create(PosixSignal.SIGINT, context => { context.Cancel = true; stop.Cancel(); });
        using (device)
        {
            VhostUserBackendServer server;
            try
            {
                server = VhostUserBackendServer.Bind(device, socketPath, logger);
            }
            catch (IOException e)
            {
                throw new UsageException($"Cannot listen on '{socketPath}': {e.Message}", e);
            }

            using (server)
            {
                logger.LogInformation("Serving {Device} on {Socket}", device.DeviceId, server.SocketPath);
                if (device is VirtioBlkDevice blkDevice)
                {
                    logger.LogInformation("Disk {Disk}", BlkStorageOptions.Describe(blkDevice));
                }

                await server.RunAsync(stop.Token).ConfigureAwait(false);
                logger.LogInformation("Stopped; removing {Socket}", server.SocketPath);
            }
        }

        return ExitCodes.Success;
    }
}
