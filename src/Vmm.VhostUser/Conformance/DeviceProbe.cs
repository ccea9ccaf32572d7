using Vmm.Virtio.Driver;
using Vmm.Virtio.Spec;
using Vmm.VhostUser.Frontend;

namespace Vmm.VhostUser.Conformance;

/// <summary>
/// A request made available on a ring and how to judge its completion: <see cref="Validate"/>
/// returns null when the device did the right thing, else one line saying what is wrong.
/// </summary>
internal sealed record ProbeRequest(ProbeRing Ring, object Token, string What, Func<ProbeCompletion, string?> Validate, TakeUsed? Take = null);

/// <summary>
/// What the checker knows of one device type: which rings a front-end starts, which features a
/// driver accepts, how many queues its configuration implies, and the real request it sends
/// (a blk read, an rng read, FUSE_INIT, a net frame).
/// </summary>
internal abstract class DeviceProbe
{
    /// <summary>The ring features the checker's driver queues implement (split rings only).</summary>
    protected const ulong RingFeatures = VirtioFeatures.VERSION_1 | VirtioFeatures.RING_INDIRECT_DESC | VirtioFeatures.RING_EVENT_IDX;

    protected DeviceProbe(VirtioDeviceId deviceId)
    {
        DeviceId = deviceId;
    }

    public VirtioDeviceId DeviceId { get; }

    /// <summary>The type's short name (<c>blk</c>) or <c>device-id=N</c>.</summary>
    public string Name => VhostUserDeviceType.NameOf(DeviceId);

    /// <summary>Bytes of the device's configuration structure (virtio 1.2 section 5); 0: none.</summary>
    public virtual int ConfigSize => VhostUserDeviceType.DefaultConfigSize(DeviceId);

    /// <summary>The fewest queues the device type has.</summary>
    public virtual int MinQueues => 1;

    /// <summary>The rings the checker starts, as a front-end with one request queue would.</summary>
    public virtual IReadOnlyList<int> Rings => [0];

    /// <summary>The ring the lifecycle checks stop and restart, and probe requests go to.</summary>
    public virtual int ProbeRingIndex => 0;

    /// <summary>True when the checker knows a request for this device type.</summary>
    public virtual bool HasRequests => true;

    /// <summary>Where the device's request format is specified.</summary>
    public abstract string RequestSpec { get; }

    /// <summary>What the request check does, in a few words.</summary>
    public abstract string RequestTitle { get; }

    /// <summary>The features a driver accepts of <paramref name="offered"/> (VERSION_1 and the ring features, plus the device's own).</summary>
    public virtual ulong AcceptFeatures(ulong offered) => offered & RingFeatures;

    /// <summary>How many queues <paramref name="config"/> says the device has, or null when it says nothing.</summary>
    public virtual int? ConfigQueueCount(ReadOnlySpan<byte> config, ulong offered) => null;

    /// <summary>The request check: one real request of the device type, judged strictly.</summary>
    public abstract Task<Verdict> RealRequestAsync(ConformanceRun run, CancellationToken cancellationToken);

    /// <summary>
    /// A small request on the probe ring whose data lies in <paramref name="data"/>, not yet
    /// notified: what the lifecycle checks use to see whether the ring is served.
    /// </summary>
    public abstract ProbeRequest SubmitProbe(ConformanceRun run, IGuestBufferPool data);

    /// <summary>Forgets what the device was told (after RESET_DEVICE or on a new connection).</summary>
    public virtual void Reset()
    {
    }

    public static DeviceProbe For(VirtioDeviceId id) => id switch
    {
        VirtioDeviceId.Block => new BlkProbe(),
        VirtioDeviceId.Entropy => new RngProbe(),
        VirtioDeviceId.FileSystem => new FsProbe(),
        VirtioDeviceId.Net => new NetProbe(),
        _ => new GenericProbe(id),
    };

    /// <summary>Rents <paramref name="size"/> bytes of <paramref name="pool"/>, zeroed.</summary>
    protected static ulong Rent(ConformanceRun run, IGuestBufferPool pool, int size)
    {
        ulong address = pool.Rent(size);
        run.Memory.Clear(address, (ulong)size);
        return address;
    }

    /// <summary>Submits <paramref name="buffers"/> on <paramref name="ring"/>; a full ring is the checker's own error.</summary>
    protected static void Submit(ProbeRing ring, ReadOnlySpan<DriverBuffer> buffers, object token)
    {
        ring.ClearCall();
        if (!ring.Queue.TrySubmit(buffers, token))
        {
            throw new InvalidOperationException($"Ring {ring.Index} has no free descriptors left.");
        }
    }
}

/// <summary>A device type the checker has no request for: the protocol and ring checks run without one.</summary>
internal sealed class GenericProbe(VirtioDeviceId id) : DeviceProbe(id)
{
    public override bool HasRequests => false;

    public override string RequestSpec => "virtio 1.2, section 5";

    public override string RequestTitle => "One real request";

    public override Task<Verdict> RealRequestAsync(ConformanceRun run, CancellationToken cancellationToken) =>
        Task.FromResult(Verdict.NotApplicable($"no request is known for device type {Name}"));

    public override ProbeRequest SubmitProbe(ConformanceRun run, IGuestBufferPool data) =>
        throw new NotSupportedException($"No request is known for device type {Name}.");
}
