namespace Vmm.Core.Memory;

/// <summary>
/// Something that writes guest memory and can say which pages it wrote: a vhost-user back-end
/// through its dirty log (vhost-user.rst, "Migration"), or the VMM itself (<see cref="GuestMemory"/>).
/// What a live copy of guest memory needs (docs/migration.md): start, then harvest rounds of
/// dirty pages while the guest runs, then stop.
/// </summary>
/// <remarks>
/// Bitmaps have the layout of the vhost-user log: one bit per 4 KiB page
/// (<see cref="DirtyPageLog.PageSize"/>), bit <c>n % 64</c> of u64 word <c>n / 64</c> for the
/// page at guest-physical address <c>n * 4096</c>. Size them with <see cref="DirtyPageBitmap.WordsFor(GuestMemory)"/>.
/// </remarks>
public interface IDirtyPageTracking
{
    /// <summary>
    /// Starts logging the pages written from now on. Pages written before are not reported: copy
    /// all of memory after this call, then harvest. Calling it while logging changes nothing.
    /// </summary>
    void StartLogging();

    /// <summary>
    /// Moves the pages written since the last harvest into <paramref name="bitmap"/> (ORed into
    /// it; their bits here are cleared, one atomic exchange per word, so a page written during
    /// the harvest is in this round or the next, never lost). Returns how many pages it moved.
    /// 0 while not logging.
    /// </summary>
    long HarvestDirtyPages(Span<ulong> bitmap);

    /// <summary>Stops logging; pages not harvested yet are dropped.</summary>
    void StopLogging();
}
