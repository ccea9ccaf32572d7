using System.Text;
using System.Text.Json.Nodes;
using Vmm.Interop.Tests.Harness;

namespace Vmm.Interop.Tests;

/// <summary>
/// Live migration of a QEMU 7.2 TCG guest whose vhost-user-blk disk is served by
/// <c>./vmm serve blk</c>: a second QEMU (<c>-incoming unix:</c>) with a second
/// <c>vmm serve blk</c> on the same image takes the guest over. In the middle of the migration,
/// after QEMU sent all of guest memory, the guest reads data the host wrote into the image with
/// O_DIRECT into a buffer its CPU filled with 0xFF before: the device writes it by DMA into
/// pages QEMU already sent, which only the back-end's dirty-page log reports (guest scenario
/// blk-migrate, guest/migcheck.c). On the destination the guest compares that buffer, without
/// reading the disk again, with the data the host wrote. With <c>--test-ignore-dirty-log</c>
/// (the back-end offers LOG_ALL and marks its rings but not the data) the same migration must lose that data: the
/// destination's buffer still holds 0xFF pages, which shows the check can fail.
/// </summary>
public sealed class MigrationInteropTests : InteropTest
{
    const int OffsetMiB = 1;

    /// <summary>The data the guest reads into its buffer during the migration.</summary>
    const int DataMiB = 32;

    const int DataPages = DataMiB * 256;

    const string Seed = "mig";
    static readonly TimeSpan PhaseTimeout = TimeSpan.FromSeconds(300);

    [Test]
    public async Task Guest_migrates_live_and_keeps_every_byte_the_device_wrote_into_its_memory()
    {
        var run = await MigrateAsync(ignoreDirtyLog: false);

        var destination = run.Destination;
        var expected = TestDisk.Md5(TestDisk.Pattern(Seed, DataMiB));
        Assert.That(destination.Require("data"), Is.EqualTo("ok"),
            $"{destination.Require("data.bad")} of {DataPages} pages the device wrote into guest memory during the migration differ on the destination " +
            $"({destination.Require("data.ff")} still hold the 0xFF they held when QEMU sent them)");
        Assert.That(TestDisk.Md5(run.Image, OffsetMiB, DataMiB), Is.EqualTo(expected), "the image on the host no longer holds the data");
        Assert.That(run.SourceBackend.Log, Does.Contain("Dirty-page log set"), "the source back-end was never given a log");
    }

    [Test]
    public async Task The_same_migration_loses_data_when_the_backend_does_not_log()
    {
        var run = await MigrateAsync(ignoreDirtyLog: true);

        // The migration itself succeeds (QEMU cannot tell); the pages the device wrote after
        // QEMU sent them reach the destination as they were sent: full of the guest's 0xFF.
        var destination = run.Destination;
        Assert.That(destination.Require("data"), Is.EqualTo("bad"),
            "the guest kept every byte although the back-end logged nothing: this test cannot tell a logging back-end from one that does not");
        Assert.That(int.Parse(destination.Require("data.ff")), Is.GreaterThan(0),
            "no page of the destination's buffer holds the 0xFF the guest wrote before the device's write: the data differs for another reason");
        TestContext.Progress.WriteLine($"without the log: {destination.Require("data.bad")} of {DataPages} pages differ on the destination, {destination.Require("data.ff")} still all 0xFF");
    }

    sealed record Run(QemuGuest Destination, BackendProcess SourceBackend, string Image);

    async Task<Run> MigrateAsync(bool ignoreDirtyLog)
    {
        // The data is on the disk before boot: the guest's CPU never writes it.
        var image = TestDisk.Create(PathIn("disk.img"), OffsetMiB + DataMiB, prefillMiB: 0);
        TestDisk.Write(image, (long)OffsetMiB * TestDisk.MiB, TestDisk.Pattern(Seed, DataMiB));
        string[]? args = ignoreDirtyLog ? ["--test-ignore-dirty-log"] : null;
        var sourceBackend = await StartBlkAsync(BackendKind.Vmm, image, PathIn("src.sock"), vmmArgs: args);
        var destinationBackend = await StartBlkAsync(BackendKind.Vmm, image, PathIn("dst.sock"), vmmArgs: args);
        var options = new GuestOptions { Scenario = "blk-migrate", OffsetMiB = OffsetMiB, SizeMiB = DataMiB, Seed = Seed };

        var source = await StartGuestAsync(options with
        {
            Socket = PathIn("src.sock"),
            ExtraArguments = ["-qmp", $"unix:{PathIn("src.qmp")},server=on,wait=off"],
        });
        var destination = await StartGuestAsync(options with
        {
            Socket = PathIn("dst.sock"),
            ExtraArguments = ["-qmp", $"unix:{PathIn("dst.qmp")},server=on,wait=off", "-incoming", $"unix:{PathIn("migrate.sock")}"],
        });
        using (var destinationQmp = await QmpClient.ConnectAsync(PathIn("dst.qmp"), TimeSpan.FromSeconds(60)))
        {
            // The destination listens once it answers QMP.
            await destinationQmp.ExecuteAsync("query-status");
        }

        using var qmp = await QmpClient.ConnectAsync(PathIn("src.qmp"), TimeSpan.FromSeconds(60));

        // Phase A: the guest's CPU filled its buffer with 0xFF.
        await source.WaitForMarkerAsync("filled", timeout: PhaseTimeout);

        // A slow copy and a downtime no guest can meet (8 KiB at 8 MiB/s: two pages, while a
        // process in the guest keeps dirtying memory): QEMU keeps iterating until it is lifted.
        await qmp.ExecuteAsync("migrate-set-parameters", new Dictionary<string, object> { ["max-bandwidth"] = 8L << 20, ["downtime-limit"] = 1 });
        try
        {
            await qmp.ExecuteAsync("migrate", new Dictionary<string, object> { ["uri"] = $"unix:{PathIn("migrate.sock")}" });
        }
        catch (QmpException e)
        {
            Assert.Fail($"QEMU refused to migrate the guest ({e.Description}): the back-end must offer VHOST_F_LOG_ALL and LOG_SHMFD.");
        }

        // Three dirty-bitmap syncs: every page was sent once, and again after the guest's
        // last writes to it; the buffer's 0xFF pages are on the destination.
        await WaitForSyncsAsync(qmp, source, 3);

        // Phase B: the device writes the data into the buffer.
        WriteSignal(image, "vmmread");
        await source.WaitForMarkerAsync("read", timeout: PhaseTimeout);
        Assert.That(await MigrationStatusAsync(qmp), Is.EqualTo("active"), "the migration ended before the guest's read");

        // Then a downtime a loaded TCG guest can meet: the migration converges and completes.
        await qmp.ExecuteAsync("migrate-set-parameters", new Dictionary<string, object> { ["max-bandwidth"] = 1L << 30, ["downtime-limit"] = 2000 });
        var status = await WaitForMigrationAsync(qmp, source);
        Assert.That(status, Is.EqualTo("completed"), $"the migration ended '{status}'.\n{source.Failure("source")}");
        Assert.That(source.Serial + destination.Serial, Does.Not.Contain("Migration disabled"));
        TestContext.Progress.WriteLine($"migration completed (dirty log {(ignoreDirtyLog ? "ignored" : "kept")})");

        // Phase C: the guest, now running on the destination only (the source stays paused
        // after a completed migration), checks its buffer.
        WriteSignal(image, "vmmdone");
        await destination.WaitDoneAsync(TimeSpan.FromSeconds(240), destinationBackend);
        Assert.That(source.Marker("data"), Is.Null, "the source guest ran its check: it was not paused when the migration completed");
        return new Run(destination, sourceBackend, image);
    }

    /// <summary>Tells the guest to go on: it polls sector 0 of the image (outside the data).</summary>
    static void WriteSignal(string image, string word) => TestDisk.Write(image, 0, Encoding.ASCII.GetBytes(word));

    static async Task<string> MigrationStatusAsync(QmpClient qmp)
    {
        JsonNode? info = await qmp.ExecuteAsync("query-migrate");
        return info?["status"]?.GetValue<string>() ?? "none";
    }

    /// <summary>Waits until QEMU synced its dirty bitmap <paramref name="count"/> times; fails if the migration ended first.</summary>
    static async Task WaitForSyncsAsync(QmpClient qmp, QemuGuest source, long count)
    {
        var until = DateTime.UtcNow + PhaseTimeout;
        while (DateTime.UtcNow < until)
        {
            JsonNode? info = await qmp.ExecuteAsync("query-migrate");
            var status = info?["status"]?.GetValue<string>() ?? "none";
            if (status is "completed" or "failed" or "cancelled")
                throw source.Failure($"the migration ended '{status}' before the guest's read, with a 1 ms downtime limit");
            if (info?["ram"]?["dirty-sync-count"]?.GetValue<long>() >= count)
                return;
            await Task.Delay(250);
        }

        throw source.Failure($"QEMU did not sync its dirty bitmap {count} times within {PhaseTimeout.TotalSeconds:0} s");
    }

    static async Task<string> WaitForMigrationAsync(QmpClient qmp, QemuGuest source)
    {
        var until = DateTime.UtcNow + PhaseTimeout;
        while (DateTime.UtcNow < until)
        {
            var status = await MigrationStatusAsync(qmp);
            if (status is "completed" or "failed" or "cancelled")
                return status;
            if (source.Process.HasExited)
                throw source.Failure("the source QEMU exited during the migration");
            await Task.Delay(250);
        }

        throw source.Failure($"the migration did not complete within {PhaseTimeout.TotalSeconds:0} s");
    }
}
