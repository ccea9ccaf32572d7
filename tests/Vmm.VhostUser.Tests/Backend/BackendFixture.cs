using System.Security.Cryptography;
using Microsoft.Extensions.Logging.Abstractions;
using Vmm.Virtio.Devices.Blk;
using Vmm.VhostUser.Backend;

namespace Vmm.VhostUser.Tests.Backend;

/// <summary>A virtio-blk back-end serving a temporary image on a temporary socket, for one test.</summary>
internal sealed class BackendFixture : IAsyncDisposable
{
    public const int ImageSize = 4 << 20;
    private readonly CancellationTokenSource _stop = new();
    private readonly Task _serving;

    public BackendFixture(int queues = 1, bool readOnly = false, VhostUserBackendOptions? options = null)
    {
        Directory = System.IO.Directory.CreateTempSubdirectory("vmm-backend-");
        ImagePath = Path.Combine(Directory.FullName, "disk.img");
        OriginalImage = RandomNumberGenerator.GetBytes(ImageSize);
        File.WriteAllBytes(ImagePath, OriginalImage);
        SocketPath = Path.Combine(Directory.FullName, "blk.sock");
        Device = new VirtioBlkDevice(new VirtioBlkOptions(ImagePath, readOnly, queues, 256));
        Server = VhostUserBackendServer.Bind(Device, SocketPath, NullLogger.Instance, options);
        _serving = Task.Run(() => Server.RunAsync(_stop.Token));
    }

    public DirectoryInfo Directory { get; }

    public string ImagePath { get; }

    public byte[] OriginalImage { get; }

    public string SocketPath { get; }

    public VirtioBlkDevice Device { get; }

    public VhostUserBackendServer Server { get; }

    /// <summary>The server task: it must still be running after whatever a test did.</summary>
    public Task Serving => _serving;

    public Task<ScriptedFrontend> ConnectAsync(ScriptedFrontend.FrontendMemory memory = ScriptedFrontend.FrontendMemory.Sealed) =>
        ScriptedFrontend.ConnectAsync(SocketPath, memory);

    /// <summary>
    /// A well-behaved front-end: handshake, memory table, one queue, a write and a read-back.
    /// Proves the back-end serves normally after whatever came before.
    /// </summary>
    public async Task AssertServesWellBehavedFrontendAsync()
    {
        Assert.That(_serving.IsCompleted, Is.False, "the server stopped");
        using ScriptedFrontend frontend = await ConnectAsync();
        ScriptedFrontend.BlkQueue queue = await frontend.StartDeviceAsync(
            64, Vmm.Virtio.Spec.VirtioFeatures.VERSION_1 | Vmm.VhostUser.Protocol.VhostUserVirtioFeatures.PROTOCOL_FEATURES);
        byte[] pattern = RandomNumberGenerator.GetBytes(4096);
        Assert.That(queue.Write(8, pattern), Is.Zero, "write status");
        byte[] back = new byte[4096];
        Assert.That(queue.Read(8, back), Is.Zero, "read status");
        Assert.That(back, Is.EqualTo(pattern), "read back what was written");
    }

    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync();
        try
        {
            await _serving.WaitAsync(TimeSpan.FromSeconds(10));
        }
        catch (OperationCanceledException)
        {
        }

        Server.Dispose();
        Device.Dispose();
        _stop.Dispose();
        Directory.Delete(recursive: true);
    }
}
