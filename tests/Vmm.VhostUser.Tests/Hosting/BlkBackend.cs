using System.Buffers.Binary;
using Microsoft.Extensions.Logging.Abstractions;
using Vmm.Virtio;
using Vmm.Virtio.Devices.Blk;
using Vmm.Virtio.Queues;
using Vmm.Virtio.Spec;
using Vmm.VhostUser.Backend;

namespace Vmm.VhostUser.Tests.Hosting;

/// <summary>
/// Our vhost-user blk back-end served in this process: a temporary image whose first bytes are
/// known, a <see cref="VirtioBlkDevice"/> on it, and <see cref="VhostUserBackendServer"/> on a
/// temporary socket. The test can stop it (the front-end loses its connection), start it again
/// on the same socket and image, and change the capacity it reports (a config change the
/// back-end announces with CONFIG_CHANGE_MSG).
/// </summary>
internal sealed class BlkBackend : IAsyncDisposable
{
    public const int Sectors = 64;

    private readonly ResizableDevice _device;
    private VhostUserBackendServer? _server;
    private CancellationTokenSource? _stop;
    private Task? _run;

    private BlkBackend(string directory, int queues)
    {
        Directory = directory;
        ImagePath = Path.Combine(directory, "disk.img");
        SocketPath = Path.Combine(directory, "blk.sock");
        Image = new byte[Sectors * 512];
        new Random(20261125).NextBytes(Image);
        "MANAGEDVMM-EMBED"u8.CopyTo(Image);
        File.WriteAllBytes(ImagePath, Image);
        _device = new ResizableDevice(new VirtioBlkDevice(new VirtioBlkOptions(ImagePath, Queues: queues)));
        Restart();
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

    /// <summary>Serves again on the same socket and image (after <see cref="StopAsync"/>).</summary>
    public void Restart()
    {
        _stop = new CancellationTokenSource();
        _server = VhostUserBackendServer.Bind(_device, SocketPath, NullLogger.Instance);
        _run = _server.RunAsync(_stop.Token);
    }

    /// <summary>Stops serving: the front-end's connection ends and the socket goes away.</summary>
    public async Task StopAsync()
    {
        if (_stop is null)
        {
            return;
        }

        await _stop.CancelAsync();
        _server!.Dispose();
        try
        {
            await _run!.WaitAsync(TimeSpan.FromSeconds(10));
        }
        catch (OperationCanceledException)
        {
        }

        _stop.Dispose();
        _stop = null;
    }

    /// <summary>Reports <paramref name="sectors"/> as the capacity from now on and announces the change.</summary>
    public void Resize(ulong sectors) => _device.Resize(sectors);

    public async ValueTask DisposeAsync()
    {
        await StopAsync();
        _device.Dispose();
        System.IO.Directory.Delete(Directory, recursive: true);
    }

    /// <summary>The blk device with a capacity the test can change, as a resized image would.</summary>
    private sealed class ResizableDevice(VirtioBlkDevice inner) : IVirtioDevice
    {
        private long _capacity = -1;

        public event Action? ConfigChanged;

        public event Action<DeviceFault>? Faulted
        {
            add => inner.Faulted += value;
            remove => inner.Faulted -= value;
        }

        public VirtioDeviceId DeviceId => inner.DeviceId;

        public ulong DeviceFeatures => inner.DeviceFeatures;

        public int QueueCount => inner.QueueCount;

        public int ConfigSize => inner.ConfigSize;

        public void Resize(ulong sectors)
        {
            Interlocked.Exchange(ref _capacity, (long)sectors);
            ConfigChanged?.Invoke();
        }

        public ushort GetMaxQueueSize(int index) => inner.GetMaxQueueSize(index);

        public void ReadConfig(uint offset, Span<byte> data)
        {
            inner.ReadConfig(offset, data);
            long capacity = Interlocked.Read(ref _capacity);
            if (capacity >= 0 && offset < 8)
            {
                Span<byte> field = stackalloc byte[8];
                BinaryPrimitives.WriteUInt64LittleEndian(field, (ulong)capacity);
                field[(int)offset..Math.Min(8, (int)offset + data.Length)].CopyTo(data);
            }
        }

        public void WriteConfig(uint offset, ReadOnlySpan<byte> data) => inner.WriteConfig(offset, data);

        public void StartQueue(int index, VirtqueueResources resources, ulong features, VirtqueueState? initialState = null) =>
            inner.StartQueue(index, resources, features, initialState);

        public VirtqueueState? StopQueue(int index) => inner.StopQueue(index);

        public void Reset() => inner.Reset();

        public byte[] SaveState() => inner.SaveState();

        public void RestoreState(ReadOnlySpan<byte> state) => inner.RestoreState(state);

        public void Dispose() => inner.Dispose();
    }
}
