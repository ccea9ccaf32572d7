using Vmm.Core.Posix;
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
    /// The answer "no region" is a zero mmap_size and no fd, which front-ends read as "none"
    /// (the spec gives this reply no failure code): without INFLIGHT_SHMFD, for a request that
    /// does not fit the device, and while a ring runs. A running ring's worker writes into the
    /// current region; the spec has the front-end fetch a new region at a VM reset ("QEMU should
    /// retrieve a new one when vm reset"), after the rings were stopped, so a request while one
    /// runs is refused rather than answered by unmapping the region under the worker.
    /// </summary>
    private Reply GetInflightFd(ReadOnlySpan<byte> payload)
    {
        VhostUserInflight request = VhostUserInflight.Read(payload);
        string? refusal = !Has(VhostUserProtocolFeatures.INFLIGHT_SHMFD) ? "INFLIGHT_SHMFD was not negotiated"
            : !request.IsValid || request.NumQueues > _vrings.Length ? $"{request.NumQueues} queues of {request.QueueSize} do not fit this device"
            : AnyRingRunning ? "a ring is running on the current region"
            : null;
        ulong size = request.IsValid ? InflightRegion.QueueRegionSize(request.QueueSize) * request.NumQueues : 0;
        if (refusal is null)
        {
            try
            {
                CheckMappedTotal(_memory.TotalSize, size, "the inflight region");
            }
            catch (RequestRejectedException e)
            {
                refusal = e.Message;
            }
        }

        if (refusal is not null)
        {
            Log.RequestRejected(_logger, nameof(VhostUserRequest.GET_INFLIGHT_FD), refusal);
            new VhostUserInflight(0, 0, 0, 0).Write(_replyBuffer);
            return Reply.Payload(VhostUserInflight.Size);
        }

        InflightRegion region = InflightRegion.Create(request.NumQueues, request.QueueSize);
        ReplaceInflight(region);
        new VhostUserInflight(region.MmapSize, region.MmapOffset, region.QueueCount, region.QueueSize).Write(_replyBuffer);
        return Reply.Payload(VhostUserInflight.Size, [region.Fd]);
    }

    /// <summary>
    /// SET_INFLIGHT_FD: the region to resubmit from, which the rings read when they start (spec:
    /// "so that the back-end could get inflight I/O after a crash or restart"). While a ring runs
    /// it is refused (NACK, the current region kept): the running worker writes into the current
    /// region, and swapping it would unmap memory under the worker.
    /// </summary>
    private void SetInflightFd(VhostUserMessage message)
    {
        RequireProtocolFeature(VhostUserProtocolFeatures.INFLIGHT_SHMFD, VhostUserRequest.SET_INFLIGHT_FD);
        VhostUserInflight inflight = VhostUserInflight.Read(message.Payload.Span);
        if (!inflight.IsValid || inflight.NumQueues > _vrings.Length)
        {
            throw new RequestRejectedException($"inflight region for {inflight.NumQueues} queues of {inflight.QueueSize} does not fit this device");
        }

        if (AnyRingRunning)
        {
            throw new RequestRejectedException("a ring is running on the current inflight region; stop the rings first (GET_VRING_BASE)");
        }

        ulong needed = InflightRegion.QueueRegionSize(inflight.QueueSize) * inflight.NumQueues;
        CheckMappedTotal(_memory.TotalSize, needed, "the inflight region");
        try
        {
            ReplaceInflight(InflightRegion.Open(
                message.TakeFd(0), inflight.MmapSize, inflight.MmapOffset, inflight.NumQueues, inflight.QueueSize,
                _options.UnsealedMemory, OnInflightTruncated));
        }
        catch (Exception e) when (e is ArgumentException or PosixException)
        {
            throw new RequestRejectedException(e.Message, e);
        }
    }

    /// <summary>Raised on the SIGBUS guard's thread: the front-end truncated the inflight region it handed over.</summary>
    private void OnInflightTruncated() =>
        EndSession("the front-end truncated the file behind the inflight region under a running ring");

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
