using Vmm.Core.Memory;
using Vmm.Host.Cli;
using Vmm.Virtio.Driver;
using Vmm.Virtio.Driver.Fs;
using Vmm.Virtio.Spec;
using Vmm.VhostUser.Frontend;

namespace Vmm.Host.Run;

/// <summary>
/// The guest's virtio-fs layer over the generic driver: the device config (tag,
/// num_request_queues) and a <see cref="VirtioFsSession"/> on the hiprio queue and the first
/// request queue. When the device is a vhost-user one whose back-end goes away, the session is
/// aborted at once: a FUSE session does not survive its back-end (docs/reconnect.md).
/// </summary>
public sealed class FsGuest : IDisposable
{
    private readonly VhostUserDevice? _remote;

    public FsGuest(GuestDevice device, GuestMemory memory, GuestMemoryAllocator allocator, VirtioFsSessionOptions options)
    {
        ArgumentNullException.ThrowIfNull(device);
        Device = device;
        Span<byte> config = stackalloc byte[VirtioFsConfig.Size];
        device.Driver.ReadConfig(0, config);
        Config = VirtioFsConfig.Read(config);
        IReadOnlyList<VirtioDriverQueue> queues = device.Driver.Queues;
        if (queues.Count <= VirtioFs.FirstRequestQueue)
        {
            throw new WorkloadFailedException($"The fs device has {queues.Count} queue(s); virtio-fs needs the hiprio queue and at least one request queue.");
        }

        // 5.11.4: num_request_queues is at least 1. A back-end without the CONFIG protocol feature
        // (the C virtiofsd) serves no config: the queue count is all there is to go by.
        RequestQueues = Config.NumRequestQueues > 0 ? (int)Config.NumRequestQueues : queues.Count - VirtioFs.FirstRequestQueue;
        Session = new VirtioFsSession(new VirtioFsSession.VirtqueuePair(queues[VirtioFs.HiprioQueue], queues[VirtioFs.FirstRequestQueue]), memory, allocator, options);
        if (device.Device is VhostUserDevice remote)
        {
            _remote = remote;
            remote.ConnectionLost += OnConnectionLost;
            remote.Faulted += OnFaulted;
        }
    }

    public GuestDevice Device { get; }

    public VirtioFsConfig Config { get; }

    /// <summary>The tag for messages: the config's, or a note that there is none.</summary>
    public string TagDescription => Config.Tag.Length == 0 ? "(none in the device config)" : $"'{Config.Tag}'{(Config.TagIsValidUtf8 ? string.Empty : " (not UTF-8)")}";

    public int RequestQueues { get; }

    public VirtioFsSession Session { get; }

    /// <summary>FUSE_INIT; failures become workload failures.</summary>
    public FuseInitResult Start() => Run(() => Session.Initialize());

    /// <summary>
    /// Runs <paramref name="work"/>, turning a FUSE failure into one sentence for the user. A
    /// session lost to a back-end that went away says why the work cannot go on.
    /// </summary>
    public T Run<T>(Func<T> work)
    {
        ArgumentNullException.ThrowIfNull(work);
        try
        {
            return work();
        }
        catch (FuseException e)
        {
            throw new WorkloadFailedException(e.Message.EndsWith('.') ? e.Message : e.Message + ".", e);
        }
    }

    public void Dispose()
    {
        if (_remote is not null)
        {
            _remote.ConnectionLost -= OnConnectionLost;
            _remote.Faulted -= OnFaulted;
        }

        Session.Dispose();
    }

    private void OnConnectionLost(string reason) => Session.Abort(
        $"the virtio-fs back-end went away ({reason}); FUSE state (node ids, open files) does not survive a back-end restart, so the session ends here");

    private void OnFaulted(Vmm.Virtio.DeviceFault fault) => Session.Abort($"the virtio-fs device failed: {fault.Reason}");
}
