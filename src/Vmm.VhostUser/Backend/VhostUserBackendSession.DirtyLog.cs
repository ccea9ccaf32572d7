using Vmm.Core.Events;
using Vmm.Core.Memory;
using Vmm.Core.Posix;
using Vmm.VhostUser.Channel;
using Vmm.VhostUser.Protocol;

namespace Vmm.VhostUser.Backend;

/// <summary>
/// Dirty-page logging for live migration (vhost-user.rst, "Migration"): the front-end shares a
/// log (SET_LOG_BASE), turns logging on and off with VHOST_F_LOG_ALL in SET_FEATURES and, per
/// ring, with VHOST_VRING_F_LOG in SET_VRING_ADDR; while it is on, every queue marks the pages its
/// device writes (<see cref="Vmm.Virtio.Queues.VirtqueueDirtyLog"/>). The inflight region is not
/// logged: it is the front-end's memory, not the guest's (SET_INFLIGHT_FD), and never migrates.
/// </summary>
public sealed partial class VhostUserBackendSession
{
    private DirtyPageLog? _dirtyLog;
    private EventFd? _logCall;

    private bool DirtyLogging => (_ackedFeatures & VhostUserVirtioFeatures.LOG_ALL) != 0;

    /// <summary>
    /// SET_LOG_BASE with LOG_SHMFD: maps <c>mmap_size</c> bytes at <c>mmap_offset</c> of the fd as
    /// the new log, after checking the description against the file (a regular file holding the
    /// range, unable to shrink under us) and against guest memory (the log must cover every
    /// region, vhost-user.rst: "should be large enough to cover all known guest addresses").
    /// The queues move to it before the old one is unmapped, and the reply (a u64 0, as
    /// libvhost-user and qemu-storage-daemon send) goes only once no queue marks the old one:
    /// QEMU harvests and frees the old log as soon as it has the reply. A log that cannot be
    /// taken ends the connection (<see cref="HasNaturalReply"/>): a front-end that then
    /// harvested an empty log would migrate a guest without the device's writes.
    /// </summary>
    private Reply SetLogBase(VhostUserMessage message)
    {
        RequireProtocolFeature(VhostUserProtocolFeatures.LOG_SHMFD, VhostUserRequest.SET_LOG_BASE);
        ReadOnlySpan<byte> payload = message.Payload.Span;
        if (payload.Length != VhostUserLog.Size || message.Fds.Count != 1)
        {
            throw new RequestRejectedException("with LOG_SHMFD the request carries the 16-byte log description and the log fd");
        }

        VhostUserLog description = VhostUserLog.Read(payload);
        ulong memoryEnd = GuestMemoryEnd();
        ulong needed = DirtyPageLog.BytesToCover(memoryEnd);
        if (description.MmapSize < needed)
        {
            throw new RequestRejectedException(
                $"a log of {description.MmapSize} bytes covers guest memory only below 0x{SaturatingMultiply(description.MmapSize, DirtyPageLog.PageSize * 8):x}, but the memory table reaches 0x{memoryEnd:x} ({needed} bytes needed)");
        }

        CheckMappedTotal(SaturatingAdd(_memory.TotalSize, description.MmapSize), _inflight?.MappedSize ?? 0, "the memory table with the dirty-page log");
        DirtyPageLog log;
        using (SafeFileDescriptor fd = message.TakeFd(0))
        {
            try
            {
                // A file that can still shrink is taken as guest memory is (VhostUserBackendOptions.UnsealedMemory).
                log = DirtyPageLog.Map(fd, description.MmapSize, description.MmapOffset, _options.UnsealedMemory == UnsealedMemoryPolicy.Guard ? OnLogTruncated : null);
            }
            catch (Exception e) when (e is ArgumentException or PosixException or InvalidOperationException)
            {
                throw new RequestRejectedException($"the log (size 0x{description.MmapSize:x}, offset 0x{description.MmapOffset:x}) is refused: {e.Message}", e);
            }
        }

        DirtyPageLog? old = _dirtyLog;
        _dirtyLog = log;
        PublishDirtyLog();

        // Waits for marks still in the old log: none lands there once the reply is out.
        old?.Dispose();
        Log.DirtyLogSet(_logger, description.MmapSize, log.CoveredBytes);
        return ReplyU64(0);
    }

    /// <summary>SET_LOG_FD: the eventfd signalled after a batch of completions marked pages. Must be an eventfd.</summary>
    private void SetLogFd(VhostUserMessage message)
    {
        EventFd call;
        try
        {
            call = new EventFd(message.TakeFd(0));
        }
        catch (Exception e) when (e is ArgumentException or PosixException)
        {
            throw new RequestRejectedException($"the log fd is refused: {e.Message}", e);
        }

        EventFd? old = _logCall;
        _logCall = call;
        PublishDirtyLog();

        // A worker still signalling the old one finds it disposed and does nothing (EventFd.TrySignal).
        old?.Dispose();
    }

    /// <summary>Points every ring's queue at the current log, or at none while LOG_ALL is off.</summary>
    private void PublishDirtyLog()
    {
        foreach (BackendVring vring in _vrings)
        {
            PublishDirtyLog(vring);
        }
    }

    private void PublishDirtyLog(BackendVring vring) =>
        vring.DirtyLog.Set(DirtyLogging ? _dirtyLog : null, vring.LogGuestAddress, _logCall, markBuffers: !_options.TestIgnoreDirtyLog);

    /// <summary>Drops the log and its eventfd (the session ends or the device resets); the rings let go of them first.</summary>
    private void DisposeDirtyLog()
    {
        foreach (BackendVring vring in _vrings)
        {
            vring.DirtyLog.Set(null, null, null);
        }

        _dirtyLog?.Dispose();
        _dirtyLog = null;
        _logCall?.Dispose();
        _logCall = null;
    }

    /// <summary>One past the highest guest-physical address of the memory table (0 when empty).</summary>
    private ulong GuestMemoryEnd()
    {
        ulong end = 0;
        foreach (GuestMemoryRegion region in _memory.Regions)
        {
            end = Math.Max(end, region.LastAddress == ulong.MaxValue ? ulong.MaxValue : region.LastAddress + 1);
        }

        return end;
    }

    private static ulong SaturatingMultiply(ulong a, ulong b) => a != 0 && b > ulong.MaxValue / a ? ulong.MaxValue : a * b;

    private void OnLogTruncated() =>
        EndSession("the front-end truncated the file behind the dirty-page log; marks written since are lost");
}
