using Vmm.Core.Memory;
using Vmm.VhostUser.Channel;
using Vmm.VhostUser.Protocol;

namespace Vmm.VhostUser.Backend;

public sealed partial class VhostUserBackendSession
{
    /// <summary>
    /// SET_MEM_TABLE replaces the whole table. The new table is built aside and swapped in only
    /// when every region mapped, so a bad table leaves the old one (and the rings) as they were.
    /// Running rings are stopped and restarted over the new table with their state.
    /// </summary>
    private void SetMemoryTable(VhostUserMessage message)
    {
        VhostUserMemoryRegion[] regions = VhostUserMemoryTable.ReadRegions(message.Payload.Span);
        var table = new GuestMemory();
        try
        {
            for (int i = 0; i < regions.Length; i++)
            {
                AddRegion(table, regions[i], message.TakeFd(i));
            }
        }
        catch
        {
            table.Dispose();
            throw;
        }

        List<BackendVring> paused = PauseRunningRings();
        GuestMemory old = _memory;
        _memory = table;
        old.Dispose();
        Log.MemoryTableSet(_logger, regions.Length, table.TotalSize);
        ResumeRings(paused);
    }

    private void AddMemoryRegion(VhostUserMessage message)
    {
        VhostUserSingleMemoryRegion single = VhostUserSingleMemoryRegion.Read(message.Payload.Span);
        if (_memory.Regions.Count >= _options.MaxMemorySlots)
        {
            throw new RequestRejectedException($"all {_options.MaxMemorySlots} memory slots are in use");
        }

        // The region table is copy-on-write, so running rings keep going while a region is added.
        AddRegion(_memory, single.Region, message.TakeFd(0));
    }

    private void RemoveMemoryRegion(ReadOnlySpan<byte> payload)
    {
        VhostUserMemoryRegion region = VhostUserSingleMemoryRegion.Read(payload).Region;

        // "The memory region to be removed is identified by its guest address, user address and
        // size. The mmap offset is ignored." (vhost-user.rst, REM_MEM_REG). Rings may be reading
        // it: stop them first, unmap, then let them go on.
        List<BackendVring> paused = PauseRunningRings();
        try
        {
            GuestMemoryRegion? removed = _memory.RemoveRegion(region.GuestPhysAddr, region.MemorySize, region.UserspaceAddr)
                ?? throw new RequestRejectedException($"no region matches {region}");
            removed.Dispose();
        }
        finally
        {
            ResumeRings(paused);
        }
    }

    private static void AddRegion(GuestMemory table, in VhostUserMemoryRegion region, Vmm.Core.Posix.SafeFileDescriptor fd)
    {
        string? invalid = region.Validate();
        if (invalid is not null)
        {
            fd.Dispose();
            throw new RequestRejectedException($"memory region {region}: {invalid}");
        }

        try
        {
            table.AddRegion(region.GuestPhysAddr, region.MemorySize, region.UserspaceAddr, fd, region.MmapOffset);
        }
        catch (GuestMemoryException e)
        {
            throw new RequestRejectedException($"memory region {region}: {e.Message}", e);
        }
        catch (Vmm.Core.Posix.PosixException e)
        {
            throw new RequestRejectedException($"memory region {region} cannot be mapped: {e.Message}", e);
        }
    }
}
