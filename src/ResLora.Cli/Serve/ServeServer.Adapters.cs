using System.Text.Json;
using Microsoft.AspNetCore.Http;
using ResLora.Pipelines.Serving;

namespace ResLora.Cli.Serve;

// vLLM's runtime adapter routes (docs/serving.md, "Loading adapters at run time"): POST /v1/load_lora_adapter with
// {"lora_name", "lora_path"} and POST /v1/unload_lora_adapter with {"lora_name"}, behind the API key like every route.
// As vLLM answers: 200 with a plain-text "Success: ..." line; 400 for bad bodies, a taken name or a folder that cannot be
// loaded; 404 for a missing folder or an adapter that is not loaded. Beyond vLLM: 403 for a path outside --adapter-root,
// and 404 naming --adapter-root when the server was started without it.
internal sealed partial class ServeServer
{
    private async Task ChangeAdapters(HttpContext ctx, bool load)
    {
        var aborted = ctx.RequestAborted;
        string route = load ? "load_lora_adapter" : "unload_lora_adapter";
        try
        {
            if (Model.AdapterRootPath is null)
            {
                await Error(ctx, 404, $"POST /v1/{route} is off: this server was started without --adapter-root; restart it with --adapter-root DIR to load and unload adapter folders under DIR at run time.",
                    "invalid_request_error", null, "adapter_root_not_set").ConfigureAwait(false);
                return;
            }
            string name, path = "";
            using (var doc = await ReadJsonAsync(ctx, aborted).ConfigureAwait(false))
            {
                var root = doc.RootElement;
                if (root.ValueKind != JsonValueKind.Object) throw Bad("the request body must be a JSON object.", null);
                name = Text(root, "lora_name", load ? "Both 'lora_name' and 'lora_path' must be provided: lora_name is the adapter's name" : "lora_name is required: the name of a loaded adapter");
                if (load) path = Text(root, "lora_path", "Both 'lora_name' and 'lora_path' must be provided: lora_path is an adapter folder under --adapter-root");
            }
            string message;
            if (load)
            {
                var added = await Model.LoadAdapterAsync(name, path, w => Console.Error.WriteLine($"warning: {w}"), aborted).ConfigureAwait(false);
                Console.Error.WriteLine($"serve: loaded adapter '{name}' ({added.Kind}, {added.Modules} projections) from {added.Source} as {Model.Name}:{name}");
                message = $"Success: LoRA adapter '{name}' added successfully.";
            }
            else
            {
                // Not tied to the client's connection: once accepted, the unload happens after the requests that use the adapter.
                await Model.UnloadAdapterAsync(name).ConfigureAwait(false);
                Console.Error.WriteLine($"serve: unloaded adapter '{name}'");
                message = $"Success: LoRA adapter '{name}' removed successfully.";
            }
            ctx.Response.StatusCode = 200;
            ctx.Response.ContentType = "text/plain; charset=utf-8";
            await ctx.Response.WriteAsync(message, aborted).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (aborted.IsCancellationRequested)
        {
            // The client went away: nobody to answer.
        }
        catch (Exception e)
        {
            await Fail(ctx, e).ConfigureAwait(false);
        }
    }

    /// <summary>A required non-empty string field.</summary>
    private static string Text(JsonElement root, string field, string missing)
    {
        if (!root.TryGetProperty(field, out var v) || v.ValueKind == JsonValueKind.Null || (v.ValueKind == JsonValueKind.String && v.ValueEquals("")))
            throw Bad($"{missing}.", field);
        return v.ValueKind == JsonValueKind.String ? v.GetString()! : throw Bad($"{field} must be a string.", field);
    }

    private static ServingException Bad(string message, string? param) => new(ServingErrorKind.InvalidRequest, message, param);
}
