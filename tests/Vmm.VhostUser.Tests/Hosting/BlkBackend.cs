using Microsoft.Extensions.Logging.Abstractions;
using Vmm.Virtio.Devices.Blk;
using Vmm.VhostUser.Backend;

namespace Vmm.VhostUser.Tests.Hosting;

/// <summary>
/// Our vhost-user blk back-end served in this process: a temporary image whose first bytes are
/// known, a <see cref="VirtioBlkDevice"/> on it, and <see cref="VhostUserBackendServer"/> on a
/// temporary socket.
/// </summary>
internal sealed class BlkBackend : IAsyncDisposable
{
    public const int Sectors = 64;

    private readonly VirtioBlkDevice _device;
    private readonly VhostUserBackendServer _server;
    private readonly CancellationTokenSource _stop = new();
    private readonly Task _run;

    private BlkBackend(string directory, int queues)
    {
        Directory = directory;
        ImagePath = Path.Combine(directory, "disk.img");
        SocketPath = Path.Combine(directory, "blk.sock");
        Image = new byte[Sectors * 512];
        new Random(20261125).NextBytes(Image);
        "MANAGEDVMM-EMBED"u8.CopyTo(Image);
        File.WriteAllBytes(ImagePath, Image);
        _device = new VirtioBlkDevice(new VirtioBlkOptions(ImagePath, Queues: queues));
        _server = VhostUserBackendServer.Bind(_device, SocketPath, NullLogger.Instance);
        _run = _server.RunAsync(_stop.Token);
    }

    public string Directory { get; }

    public string ImagePath { get; }

    public string SocketPath { get; }

    public byte[] Image { get; }

    /// <summary>A path in the same directory where nothing listens.</summary>
    public string MissingSocketPath => Path.Combine(Directory, "missing.sock");

    public static BlkBackend Start(int queues = 1) => new(NewDirectory(), queues);

    /// <summary>A short directory under /tmp: a Unix socket path must fit in 108 bytes.</summary>
    public static string NewDirectory()
    {
        string dir = Path.Combine(Path.GetTempPath(), "vmm-embed-" + Guid.NewGuid().ToString("N")[..8]);
        System.IO.Directory.CreateDirectory(dir);
        return dir;
    }

    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync();
        _server.Dispose();
        try
        {
            await _run.WaitAsync(TimeSpan.FromSeconds(10));
        }
        catch (OperationCanceledException)
        {
        }

        _device.Dispose();
        _stop.Dispose();
        System.IO.Directory.Delete(Directory, recursive: true);
    }
}
