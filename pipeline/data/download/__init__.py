"""Fetch the downloadable datasets over HTTP, one module per job:

- `http`: the client (User-Agent, cookies, rate limit, retries) and Range-resumed file downloads;
- `archives`: verified archives (maestro, lakh) and their safe extraction;
- `crawl`: polite, resumable crawls of web sites (classical, final-fantasy, freemidi);
- `local`: what is present locally (`.complete.json`, `dmc download --list`).

Both archives and crawls end by writing `.complete.json` into the dataset folder; a re-run that finds it
matching makes no request at all.
"""

from pipeline.data.download.archives import Checksum, download_verified, extract_archive, fetch_archive
from pipeline.data.download.crawl import CRAWL_LOG, CrawlReport, Site, crawl, local_path, page_links
from pipeline.data.download.http import FOLDER_HINT, USER_AGENT, Client, Settings, Unreachable
from pipeline.data.download.local import COMPLETE, describe_datasets, local_state

__all__ = ["COMPLETE", "CRAWL_LOG", "FOLDER_HINT", "USER_AGENT", "Checksum", "Client", "CrawlReport",
           "Settings", "Site", "Unreachable", "crawl", "describe_datasets", "download_verified",
           "extract_archive", "fetch_archive", "local_path", "local_state", "page_links"]
