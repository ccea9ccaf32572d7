using Vmm.VhostUser.Channel;
using Vmm.VhostUser.Inflight;
using Vmm.VhostUser.Protocol;

namespace Vmm.VhostUser.Backend;

public sealed partial class VhostUserBackendSession
{
    private InflightRegion? _inflight;

    /// <summary>
    /// GET_INFLIGHT_FD: a new region for the queues the front-end names. Its fd goes back with the
    /// reply; the front-end keeps it and returns it with SET_INFLIGHT_FD after a reconnect.
    /// Without INFLIGHT_SHMFD the reply has a zero mmap_size, which front-ends read as "none".
    /// </summary>
    private Reply GetInflightFd(ReadOnlySpan<byte> payload)
    {
        VhostUserInflight request = VhostUserInflight.Read(payload);
        if (!Has(VhostUserProtocolFeatures.INFLIGHT_SHMFD) || !request.IsValid || request.NumQueues > _vrings.Length)
        {
            Log.RequestRejected(_logger, nameof(VhostUserRequest.GET_INFLIGHT_FD), $"{request.NumQueues} queues of {request.QueueSize} (INFLIGHT_SHMFD {(Has(VhostUserProtocolFeatures.INFLIGHT_SHMFD) ? "negotiated" : "not negotiated")})");
            new VhostUserInflight(0, 0, 0, 0).Write(_replyBuffer);
            return Reply.Payload(VhostUserInflight.Size);
        }

        InflightRegion region = InflightRegion.Create(request.NumQueues, request.QueueSize);
        ReplaceInflight(region);
        new VhostUserInflight(region.MmapSize, region.MmapOffset, region.QueueCount, region.QueueSize).Write(_replyBuffer);
        return Reply.Payload(VhostUserInflight.Size, [region.Fd]);
    }

    private void SetInflightFd(VhostUserMessage message)
    {
        RequireProtocolFeature(VhostUserProtocolFeatures.INFLIGHT_SHMFD, VhostUserRequest.SET_INFLIGHT_FD);
        VhostUserInflight inflight = VhostUserInflight.Read(message.Payload.Span);
        if (!inflight.IsValid || inflight.NumQueues > _vrings.Length)
        {
            message.TakeFd(0).Dispose();
            throw new RequestRejectedException($"inflight region for {inflight.NumQueues} queues of {inflight.QueueSize} does not fit this device");
        }

        try
        {
            ReplaceInflight(InflightRegion.Open(message.TakeFd(0), inflight.MmapSize, inflight.MmapOffset, inflight.NumQueues, inflight.QueueSize));
        }
        catch (Exception e) when (e is ArgumentException or Vmm.Core.Posix.PosixException)
        {
            throw new RequestRejectedException(e.Message, e);
        }
    }

    private void ReplaceInflight(InflightRegion region)
    {
        InflightRegion? old = _inflight;
        _inflight = region;
        old?.Dispose();
    }

    /// <summary>The split tracker for <paramref name="vring"/> when a region covers it and the ring is split.</summary>
    private SplitInflightQueue? InflightFor(BackendVring vring) =>
        _inflight is { } region && !PackedRings && vring.Index < region.QueueCount && region.QueueSize >= vring.Size ? region.Queue(vring.Index) : null;

    /// <summary>The packed tracker for <paramref name="vring"/>: the region must be sized for exactly this ring (its entries are ring slots).</summary>
    private PackedInflightQueue? PackedInflightFor(BackendVring vring) =>
        _inflight is { } region && PackedRings && vring.Index < region.QueueCount && region.QueueSize == vring.Size ? region.PackedQueue(vring.Index) : null;

    private void DisposeInflight()
    {
        _inflight?.Dispose();
        _inflight = null;
    }

    /// <summary>
    /// A packed ring starting over an inflight region: on a fresh start (not a resume after
    /// disable) the region decides where the ring stands, since packed positions are not in guest
    /// memory and only the region knows what was taken and not returned. A region never used is
    /// initialised at the SET_VRING_BASE state.
    /// </summary>
    private (IReadOnlyList<Vmm.Virtio.Queues.PackedResubmitChain>? Resubmit, Vmm.Virtio.Queues.VirtqueueState State) RecoverPacked(
        BackendVring vring, PackedInflightQueue tracker, Vmm.Virtio.Queues.VirtqueueParams parameters, Vmm.Virtio.Queues.VirtqueueState initial)
    {
        if (vring.Resume is not null)
        {
            return (null, initial);
        }

        try
        {
            (IReadOnlyList<Vmm.Virtio.Queues.PackedResubmitChain> chains, Vmm.Virtio.Queues.VirtqueueState state) =
                tracker.Recover(_memory, parameters.DescriptorArea, initial);
            Log.InflightInstalled(_logger, vring.Index, vring.Size, chains.Count);
            return (chains, state);
        }
        catch (Exception e) when (e is InvalidDataException or Vmm.Core.Memory.GuestMemoryException)
        {
            throw new RequestRejectedException($"ring {vring.Index}: {e.Message}", e);
        }
    }
}
